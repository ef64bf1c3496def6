"""jaxlstm.gru and jaxlstm.gru_cell against the NumPy reference and torch.nn.GRU on shared weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxlstm as jl
from tests.reference import assert_close
from tests.reference_gru import ref_gru, ref_gru_cell

D, H, B, T = 3, 5, 3, 6


def _params(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    shapes = ((D, 3 * H), (H, 3 * H), (3 * H,), (3 * H,))
    return jl.GRUParams(*(jnp.asarray(rng.uniform(-0.7, 0.7, s).astype(dtype)) for s in shapes))


def _inputs(seed=1, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, T, D)).astype(dtype), rng.normal(size=(B, H)).astype(dtype)


_gru = jax.jit(jl.gru, static_argnames=("reverse", "gradient"))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, (6, 4, 0)])
def test_gru_matches_the_numpy_reference(reverse, lengths):
    p, (xs, h0) = _params(), _inputs()
    seq_lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
    final, hs = _gru(p, jnp.asarray(xs), jnp.asarray(h0), seq_lengths=seq_lengths, reverse=reverse)
    ref_final, ref_hs = ref_gru(*p, xs, h0, seq_lengths=lengths, reverse=reverse)
    assert_close(hs, ref_hs)
    assert_close(final, ref_final)


def test_gru_cell_is_one_step_of_the_reference():
    p, (xs, h0) = _params(), _inputs()
    h, out = jl.gru_cell(p, jnp.asarray(h0), jnp.asarray(xs[:, 0]))
    expected = np.stack([ref_gru_cell(*p, h0[s], xs[s, 0]) for s in range(B)])
    assert_close(h, expected)
    assert out is h


@pytest.mark.parametrize("bidirectional", [False, True])
def test_gru_equals_torch_gru_on_shared_weights(bidirectional):
    torch.manual_seed(0)
    layer = torch.nn.GRU(D, H, batch_first=True, bidirectional=bidirectional)
    xs, _ = _inputs()
    out, h_n = layer(torch.tensor(xs))
    suffixes = ["_l0"] + (["_l0_reverse"] if bidirectional else [])
    for direction, suffix in enumerate(suffixes):
        p = jl.GRUParams(
            *(
                jnp.asarray(getattr(layer, name + suffix).detach().numpy())
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            )
        )
        p = p._replace(w_ih=p.w_ih.T, w_hh=p.w_hh.T)
        final, hs = _gru(p, jnp.asarray(xs), reverse=bool(direction))
        assert_close(hs, out.detach().numpy()[..., direction * H : (direction + 1) * H])
        assert_close(final, h_n.detach().numpy()[direction])


def test_fused_gradients_equal_autodiff_and_torch():
    p, (xs, h0) = _params(), _inputs()
    lengths = jnp.asarray([6, 2, 5], jnp.int32)

    def loss(p, xs, h0, gradient):
        final, hs = jl.gru(p, xs, h0, seq_lengths=lengths, gradient=gradient)
        return jnp.sum(hs * hs) + jnp.sum(final)

    fused = jax.grad(loss, argnums=(0, 1, 2))(p, jnp.asarray(xs), jnp.asarray(h0), "fused")
    autodiff = jax.grad(loss, argnums=(0, 1, 2))(p, jnp.asarray(xs), jnp.asarray(h0), "autodiff")
    for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(autodiff)):
        assert_close(a, b)
    # torch, the same weights and loss (one sequence at a time: its own length)
    layer = torch.nn.GRU(D, H, batch_first=True)
    with torch.no_grad():
        for name, value in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"), p):
            value = np.asarray(value)
            getattr(layer, name).copy_(torch.tensor(value.T if value.ndim == 2 else value))
    total = 0.0
    for s in range(B):
        out, h_n = layer(torch.tensor(xs[s : s + 1, : int(lengths[s])]), torch.tensor(h0[s : s + 1])[None])
        total = total + (out**2).sum() + h_n.sum()
    total.backward()
    torch_grads = [getattr(layer, n).grad.numpy() for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    for ours, theirs in zip(fused[0], torch_grads):
        assert_close(ours, theirs.T if theirs.ndim == 2 else theirs)


def test_bad_params_name_the_argument():
    p, (xs, _) = _params(), _inputs()
    with pytest.raises(TypeError, match="params must be a jaxlstm.GRUParams"):
        jl.gru(tuple(p), jnp.asarray(xs))
    with pytest.raises(ValueError, match=r"params.w_hh must have shape \(hidden_size, 3 \* hidden_size\)"):
        jl.gru(p._replace(w_hh=p.w_hh[:, :-1]), jnp.asarray(xs))
    with pytest.raises(ValueError, match="xs has 4 features but params expect input_size=3"):
        jl.gru(p, jnp.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=r"carry must have shapes \[\(3, 5\)\]"):
        jl.gru(p, jnp.asarray(xs), jnp.zeros((3, 4)))
