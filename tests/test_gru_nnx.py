"""jl.nnx.GRU and jl.nnx.GRUCell against torch.nn.GRU, and the cell in nnx.RNN against the layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxlstm as jl
from tests.reference import assert_close

D, H, B, T = 3, 4, 3, 5


def _load_torch(model: jl.nnx.GRU, layer: torch.nn.GRU) -> None:
    for name in [n for n in dir(model) if n.startswith("layer_")]:
        l, suffix = name.split("_")[1], "_reverse" if name.endswith("_reverse") else ""
        cell = getattr(model, name)
        for ours, theirs in (("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh")):
            value = getattr(layer, f"{theirs}_l{l}{suffix}").detach().numpy()
            getattr(cell, ours).set_value(jnp.asarray(value.T if value.ndim == 2 else value))


def test_nnx_gru_equals_torch_gru_bidirectional_with_lengths():
    torch.manual_seed(0)
    layer = torch.nn.GRU(D, H, num_layers=2, batch_first=True, bidirectional=True)
    model = jl.nnx.GRU(D, H, num_layers=2, bidirectional=True, return_carry=True, rngs=nnx.Rngs(0))
    _load_torch(model, layer)
    xs = np.random.default_rng(0).normal(size=(B, T, D)).astype(np.float32)
    lengths = [5, 2, 4]
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.tensor(xs), lengths, batch_first=True, enforce_sorted=False)
    out, h_n = layer(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
    finals, hs = model(jnp.asarray(xs), seq_lengths=jnp.asarray(lengths))
    assert_close(hs, out.detach().numpy())
    assert_close(jnp.stack([f for row in finals for f in row]), h_n.detach().numpy())


def test_the_cell_in_nnx_rnn_equals_the_layer_and_dropout_needs_a_stream():
    model = jl.nnx.GRU(D, H, rngs=nnx.Rngs(0))
    cell = jl.nnx.GRUCell(D, H, rngs=nnx.Rngs(1))
    for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
        getattr(cell, name).set_value(getattr(model.layer_0, name)[...])
    xs = jax.random.normal(jax.random.key(2), (B, T, D))
    assert_close(nnx.RNN(cell)(xs), model(xs))
    stacked = jl.nnx.GRU(D, H, num_layers=2, dropout=0.5, rngs=nnx.Rngs(params=0))  # no dropout or default stream
    with pytest.raises(ValueError, match="dropout=0.5 between 2 layers draws random masks and needs a 'dropout' rng"):
        stacked(xs)
    assert_close(stacked(xs, deterministic=True), stacked(xs, deterministic=True))
    assert not np.allclose(stacked(xs, rngs=jax.random.key(3)), stacked(xs, deterministic=True))  # a key, as jl.nnx.LSTM
    for rngs in (nnx.Rngs(0, dropout=1), nnx.Rngs(0)):  # the 'dropout' stream, else 'default', as jl.nnx.LSTM
        with_stream = jl.nnx.GRU(D, H, num_layers=2, dropout=0.5, rngs=rngs)
        assert not np.allclose(with_stream(xs), with_stream(xs, deterministic=True))
