"""jl.GRU and jl.GRUCell (flax.linen) against torch.nn.GRU and Flax's nn.RNN(nn.GRUCell) on shared weights;
the stateful GRU against torch.nn.GRU and the NumPy loop of tests/reference_gru.py."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxlstm as jl
from tests.reference import assert_close
from tests.reference_gru import ref_gru

D, H, B, T = 3, 4, 3, 5


def _variables_from_torch(layer: torch.nn.GRU, num_layers: int, bidirectional: bool) -> dict:
    params = {}
    for l in range(num_layers):
        for direction, suffix in enumerate(("", "_reverse")[: 1 + bidirectional]):
            w_ih, w_hh, b_ih, b_hh = (
                getattr(layer, f"{n}_l{l}{suffix}").detach().numpy() for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            )
            params[f"layer_{l}{suffix}"] = {"w_ih": w_ih.T, "w_hh": w_hh.T, "b_ih": b_ih, "b_hh": b_hh}
    return {"params": jax.tree.map(jnp.asarray, params)}


@pytest.mark.parametrize("bidirectional", [False, True])
def test_gru_module_equals_torch_on_padded_batches(bidirectional):
    torch.manual_seed(0)
    layer = torch.nn.GRU(D, H, num_layers=2, batch_first=True, bidirectional=bidirectional)
    xs = np.random.default_rng(0).normal(size=(B, T, D)).astype(np.float32)
    lengths = [5, 3, 1]
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.tensor(xs), lengths, batch_first=True)
    out, h_n = layer(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
    variables = _variables_from_torch(layer, 2, bidirectional)
    module = jl.GRU(H, num_layers=2, bidirectional=bidirectional, return_carry=True)
    assert jax.tree.map(jnp.shape, module.init(jax.random.key(0), jnp.asarray(xs))) == jax.tree.map(jnp.shape, variables)
    finals, hs = module.apply(variables, jnp.asarray(xs), seq_lengths=jnp.asarray(lengths))
    assert_close(hs, out.detach().numpy())
    assert_close(jnp.stack([f for row in finals for f in row]), h_n.detach().numpy())
    last = jl.GRU(H, num_layers=2, bidirectional=bidirectional, return_sequences=False)
    expected_last = np.concatenate(list(h_n.detach().numpy()[-1 - bidirectional :]), axis=-1)
    assert_close(last.apply(variables, jnp.asarray(xs), seq_lengths=jnp.asarray(lengths)), expected_last)


def test_gru_cell_is_a_drop_in_for_flax_gru_cell():
    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    flax_rnn = nn.RNN(nn.GRUCell(H))
    flax_vars = flax_rnn.init(jax.random.key(0), xs)
    p = flax_vars["params"]["cell"]
    zeros = jnp.zeros((H,))
    ours = {
        "w_ih": jnp.concatenate([p["ir"]["kernel"], p["iz"]["kernel"], p["in"]["kernel"]], axis=1),
        "w_hh": jnp.concatenate([p["hr"]["kernel"], p["hz"]["kernel"], p["hn"]["kernel"]], axis=1),
        "b_ih": jnp.concatenate([p["ir"]["bias"], p["iz"]["bias"], p["in"]["bias"]]),
        "b_hh": jnp.concatenate([zeros, zeros, p["hn"]["bias"]]),
    }
    our_rnn = nn.RNN(jl.GRUCell(H))
    assert jax.tree.map(jnp.shape, our_rnn.init(jax.random.key(0), xs)["params"]["cell"]) == jax.tree.map(jnp.shape, ours)
    assert_close(our_rnn.apply({"params": {"cell": ours}}, xs), flax_rnn.apply(flax_vars, xs))
    module = jl.GRU(H)  # the layer on the same weights: the engine's loop equals Flax's scan of the cell
    assert_close(module.apply({"params": {"layer_0": ours}}, xs), flax_rnn.apply(flax_vars, xs))


def test_dropout_learned_carry_and_clear_errors():
    xs = jnp.ones((B, T, D))
    module = jl.GRU(H, num_layers=2, dropout=0.5, learn_initial_carry=True)
    variables = module.init(jax.random.key(0), xs)
    assert variables["params"]["layer_1"]["h0"].shape == (H,)
    kept = module.apply(variables, xs)
    dropped = module.apply(variables, xs, deterministic=False, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(kept, dropped)
    grads = jax.grad(lambda v: jnp.sum(module.apply(v, xs) ** 2))(variables)
    assert float(jnp.abs(grads["params"]["layer_0"]["h0"]).sum()) > 0.0
    with pytest.raises(ValueError, match="needs a 'dropout' rng"):
        module.apply(variables, xs, deterministic=False)
    with pytest.raises(TypeError, match="bidirectional must be"):
        jl.GRU(H, bidirectional="no")
    with pytest.raises(ValueError, match="reverse=True is for a single direction"):
        jl.GRU(H, bidirectional=True, reverse=True)
    with pytest.raises(ValueError, match="features must be an int >= 1"):
        jl.GRU(0)


# --------------------------------------------------------------------------- stateful streaming


def ref_gru_stack(params: dict, xs, h0s=None):
    """The NumPy loop of tests/reference_gru.py layer after layer (one direction): ``(finals, hs)``,
    ``finals`` ``(num_layers, B, H)``; ``h0s[l]`` the initial h of layer l, ``(B, H)``."""
    finals, hs = [], np.asarray(xs, np.float64)
    for l in range(len(params)):
        p = params[f"layer_{l}"]
        final, hs = ref_gru(p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], hs, None if h0s is None else h0s[l])
        finals.append(final)
    return np.stack(finals), hs


@pytest.mark.slow
def test_stateful_chunks_equal_one_call_on_the_whole_sequence():
    torch.manual_seed(0)
    torch_gru = torch.nn.GRU(D, H, num_layers=2, batch_first=True)
    xs = np.random.default_rng(0).normal(size=(2, 6, D)).astype(np.float32)
    out, h_n = (a.detach().numpy() for a in torch_gru(torch.tensor(xs)))
    variables = _variables_from_torch(torch_gru, 2, False)
    ref_finals, ref_hs = ref_gru_stack(variables["params"], xs)
    assert_close(out, ref_hs)  # torch and the NumPy loop agree: the references are the same GRU

    layer = jl.GRU(H, num_layers=2, stateful=True)
    assert "carry" not in layer.init(jax.random.key(0), jnp.asarray(xs))  # as jl.LSTM: init keeps no carry
    step = jax.jit(functools.partial(layer.apply, mutable=["carry"]))
    no_resets = jnp.zeros((2, 3), bool)
    first, state = step(variables, jnp.asarray(xs[:, :3]), resets=no_resets)
    second, state = step({**variables, **state}, jnp.asarray(xs[:, 3:]), resets=no_resets)
    assert_close(jnp.concatenate([first, second], axis=1), out)
    kept = state["carry"]["state"]  # [layer][direction] -> h (B, H), as jl.LSTM's collection and name
    assert jax.tree.map(jnp.shape, kept) == (((2, H),), ((2, H),))
    assert_close(jnp.stack([row[0] for row in kept]), h_n)
    assert_close(jnp.stack([row[0] for row in kept]), ref_finals)

    # resets[:, 0] restarts row 0 from zeros (not from the kept carry); row 1 streams on
    _, state = step(variables, jnp.asarray(xs[:, :3]), resets=no_resets)
    restart = no_resets.at[0, 0].set(True)
    restarted, _ = step({**variables, **state}, jnp.asarray(xs[:, 3:]), resets=restart)
    assert_close(restarted[0], ref_gru_stack(variables["params"], xs[:, 3:])[1][0])
    assert_close(restarted[1], out[1, 3:])
    assert np.abs(np.asarray(restarted[0]) - out[0, 3:]).max() > 1e-3  # the restart changed row 0

    # a stateful layer asked for its carries returns them, and a given initial_carry wins over the kept one
    with_carry = jl.GRU(H, num_layers=2, stateful=True, return_carry=True)
    zeros = ((jnp.zeros((2, H)),), (jnp.zeros((2, H)),))
    finals, from_zeros = with_carry.apply({**variables, **state}, jnp.asarray(xs[:, 3:]), initial_carry=zeros)
    assert_close(from_zeros, ref_gru_stack(variables["params"], xs[:, 3:])[1])
    assert_close(jnp.stack([row[0] for row in finals]), ref_gru_stack(variables["params"], xs[:, 3:])[0])


def test_stateful_errors_are_the_lstms():
    xs = jnp.ones((2, 3, D))
    for option in ({"bidirectional": True}, {"reverse": True}):
        with pytest.raises(ValueError) as lstm_error:
            jl.LSTM(H, stateful=True, **option)
        with pytest.raises(ValueError, match=r"stateful=True streams a sequence forward chunk by chunk") as gru_error:
            jl.GRU(H, stateful=True, **option)
        assert str(gru_error.value) == str(lstm_error.value)
    layer = jl.GRU(H, stateful=True)
    params = {"params": layer.init(jax.random.key(0), xs)["params"]}
    _, state = layer.apply(params, xs, mutable=["carry"])
    with pytest.raises(ValueError, match=r"the stored carry has batch shape \(2,\) but x has batch shape \(1,\)"):
        layer.apply({**params, **state}, xs[:1], mutable=["carry"])
    with pytest.raises(ValueError, match=r"checkpoint_every must be an int >= 1"):  # checked as jl.LSTM checks it
        jl.GRU(H, checkpoint_every=0)


def test_dtype_none_computes_in_the_wider_of_the_input_and_the_params_as_the_lstm():
    xs = jax.random.normal(jax.random.key(1), (2, 3, D))
    layer = jl.GRU(H, param_dtype=jnp.bfloat16)
    variables = layer.init(jax.random.key(0), xs)
    ys = layer.apply(variables, xs)  # float32 inputs, bfloat16 params: float32, as jl.LSTM (jaxlstm.layer.cast)
    assert ys.dtype == jnp.float32
    upcast = jax.tree.map(lambda a: a.astype(jnp.float32), variables)
    np.testing.assert_array_equal(ys, jl.GRU(H).apply(upcast, xs))  # the same float32 computation
    assert layer.apply(variables, xs.astype(jnp.bfloat16)).dtype == jnp.bfloat16
