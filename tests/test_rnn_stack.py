"""jaxlstm.stacked_rnn: stacks of any cell, against torch.nn.GRU (layers, bidirectional) and autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxlstm as jl
from tests.reference import assert_close
from tests.test_engine_rnn import MGU

D, H, B, T = 3, 4, 2, 5


def _torch_stack(layer: torch.nn.GRU, num_layers: int, bidirectional: bool):
    suffixes = ("", "_reverse") if bidirectional else ("",)

    def params(l, suffix):
        w_ih, w_hh, b_ih, b_hh = (
            getattr(layer, f"{name}_l{l}{suffix}").detach().numpy()
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        )
        return jl.GRUParams(*(jnp.asarray(a) for a in (w_ih.T, w_hh.T, b_ih, b_hh)))

    return tuple(tuple(params(l, s) for s in suffixes) for l in range(num_layers))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_gru_stack_equals_torch_with_lengths(bidirectional):
    torch.manual_seed(0)
    layer = torch.nn.GRU(D, H, num_layers=2, batch_first=True, bidirectional=bidirectional)
    xs = np.random.default_rng(0).normal(size=(B, T, D)).astype(np.float32)
    lengths = [5, 3]
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.tensor(xs), lengths, batch_first=True)
    out, h_n = layer(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
    stack = _torch_stack(layer, 2, bidirectional)
    finals, hs = jl.stacked_rnn(jl.cells.GRU(), stack, jnp.asarray(xs), seq_lengths=jnp.asarray(lengths))
    assert_close(hs, out.detach().numpy())
    flat = [final for layer_finals in finals for final in layer_finals]
    assert_close(jnp.stack(flat), h_n.detach().numpy())


def test_a_bidirectional_stack_of_a_user_cell_has_fused_gradients_equal_to_autodiff():
    cell = MGU()
    with jax.enable_x64(True):
        stack = jl.init_rnn_stack(
            cell, jax.random.key(0), D, H, num_layers=2, bidirectional=True, merge="sum", dtype=jnp.float64
        )
        xs = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float64)
        options = dict(seq_lengths=jnp.asarray([5, 2]), checkpoint_every=2, merge="sum")

        def loss(stack, gradient):
            _, hs = jl.stacked_rnn(cell, stack, xs, gradient=gradient, **options)
            return jnp.sum(jnp.sin(hs))

        fused, autodiff = (jax.jit(jax.grad(loss), static_argnums=1)(stack, g) for g in ("fused", "autodiff"))
        for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(autodiff), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_dropout_between_layers_needs_a_key_and_reverse_one_direction():
    cell = jl.cells.GRU()
    stack = jl.init_rnn_stack(cell, jax.random.key(0), D, H, num_layers=2, bidirectional=True)
    xs = jnp.ones((B, T, D))
    with pytest.raises(ValueError, match="deterministic=False needs a dropout_key"):
        jl.stacked_rnn(cell, stack, xs, dropout=0.5, deterministic=False)
    with pytest.raises(ValueError, match=r"stack\[1\]\[0\].w_ih has shape \(8, 12\), but layer 1 reads layer 0's outputs \(2 x 4 merged by 'sum' = 4"):
        jl.stacked_rnn(cell, stack, xs, merge="sum")
    with pytest.raises(ValueError, match="reverse=True is for one-direction stacks"):
        jl.stacked_rnn(cell, stack, xs, reverse=True)
    good = tuple(tuple(jnp.zeros((B, H)) for _ in row) for row in stack)
    bad = (good[0], (good[1][0], jnp.zeros((B, H + 1))))
    with pytest.raises(ValueError, match=r"carries\[1\]\[1\] must have shapes \[\(2, 4\)\]"):
        jl.stacked_rnn(cell, stack, xs, bad)
    with pytest.raises(ValueError, match=r"reset_carries\[1\]\[1\] must have shapes"):
        jl.stacked_rnn(cell, stack, xs, good, reset_carries=bad, resets=jnp.zeros((B, T), bool))
    with pytest.raises(TypeError, match="deterministic must be"):
        jl.stacked_rnn(cell, stack, xs, dropout=0.5, dropout_key=jax.random.key(1), deterministic="yes")
    _, dropped = jl.stacked_rnn(cell, stack, xs, dropout=0.5, dropout_key=jax.random.key(1))
    _, kept = jl.stacked_rnn(cell, stack, xs, dropout=0.5, dropout_key=jax.random.key(1), deterministic=True)
    _, plain = jl.stacked_rnn(cell, stack, xs)
    assert_close(kept, plain)
    assert not np.allclose(dropped, plain)


# --------------------------------------------------------------------------- layers stacked for the scan


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float64])
def test_layers_stack_and_unstack_exactly_at_run_time_indices(dtype):
    """The scan's stacking (written at run-time indices, so that XLA compiles one kernel for all
    layers) gives exactly jnp.stack and list(): NaN, -0.0 and inf first elements included (the
    run-time zero is read from the first element's sign bit), keys stacked alongside."""
    from jaxlstm.rnn_stack import _stack as stack_layers
    from jaxlstm.rnn_stack import _unstack as unstack_layers

    with jax.enable_x64(dtype == jnp.float64):
        a = jnp.arange(5 * 3 * 2, dtype=jnp.float32).reshape(5, 3, 2).astype(dtype)
        for first in (jnp.nan, -0.0, -jnp.inf):
            a = a.at[0, 0, 0].set(first)
            layers = [{"w": a[i], "key": jax.random.key(i)} for i in range(5)]
            for run in (lambda f, x: f(x), lambda f, x: jax.jit(f)(x)):
                stacked = run(stack_layers, layers)
                np.testing.assert_array_equal(np.asarray(stacked["w"], np.float64), np.asarray(a, np.float64))
                assert stacked["w"].dtype == dtype
                assert jax.random.key_data(stacked["key"]).shape[0] == 5
                for i, layer in enumerate(run(unstack_layers, {"w": a})):
                    np.testing.assert_array_equal(np.asarray(layer["w"], np.float64), np.asarray(a[i], np.float64))
