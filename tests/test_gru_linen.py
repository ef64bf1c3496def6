"""jl.GRU and jl.GRUCell (flax.linen) against torch.nn.GRU and Flax's nn.RNN(nn.GRUCell) on shared weights."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxlstm as jl
from tests.reference import assert_close

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
