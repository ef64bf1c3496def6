"""jl.nnx.GRU and jl.nnx.GRUCell against torch.nn.GRU, and the cell in nnx.RNN against the layer; the stateful
GRU against torch.nn.GRU and the NumPy loop of tests/reference_gru.py, and with jl.nnx.LSTM's errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxlstm as jl
from tests.reference import assert_close
from tests.reference_gru import ref_gru

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
    with_stream = jl.nnx.GRU(D, H, num_layers=2, dropout=0.5, rngs=nnx.Rngs(0))  # 'dropout', else 'default' stream
    assert not np.allclose(with_stream(xs), with_stream(xs, deterministic=True))


# --------------------------------------------------------------------------- stateful streaming


def _ref_stack(model: jl.nnx.GRU, xs, h0s):
    """The NumPy loop of tests/reference_gru.py layer after layer: ``(finals (L, B, H), hs (B, T, H))``."""
    finals, hs = [], np.asarray(xs, np.float64)
    for l in range(model.num_layers):
        cell = getattr(model, f"layer_{l}")
        final, hs = ref_gru(cell.w_ih[...], cell.w_hh[...], cell.b_ih[...], cell.b_hh[...], hs, h0s[l])
        finals.append(final)
    return np.stack(finals), hs


@pytest.mark.slow
def test_stateful_chunks_under_nnx_jit_equal_the_whole_sequence_and_reset():
    torch.manual_seed(0)
    torch_gru = torch.nn.GRU(D, H, num_layers=2, batch_first=True)
    model = jl.nnx.GRU(D, H, num_layers=2, stateful=True, learn_initial_carry=True, rngs=nnx.Rngs(0))
    _load_torch(model, torch_gru)
    rng = np.random.default_rng(0)
    learned = rng.normal(size=(2, H)).astype(np.float32)
    model.layer_0.h0[...], model.layer_1.h0[...] = jnp.asarray(learned[0]), jnp.asarray(learned[1])
    xs = rng.normal(size=(2, 6, D)).astype(np.float32)
    h0 = np.broadcast_to(learned[:, None], (2, 2, H))  # (layers, B, H): the learned h0 of every row
    out, h_n = (a.detach().numpy() for a in torch_gru(torch.tensor(xs), torch.tensor(np.ascontiguousarray(h0))))
    ref_finals, ref_hs = _ref_stack(model, xs, h0)
    assert_close(out, ref_hs)  # torch and the NumPy loop agree: the references are the same GRU

    assert model.carry[...] is None
    model.reset_carry(2)  # the initial carry in place: one trace of the step below
    assert_close(jnp.stack([row[0] for row in model.carry[...]]), h0)
    step = nnx.jit(lambda model, chunk, resets: model(chunk, resets=resets))
    no_resets = jnp.zeros((2, 3), bool)
    first, second = step(model, jnp.asarray(xs[:, :3]), no_resets), step(model, jnp.asarray(xs[:, 3:]), no_resets)
    assert_close(jnp.concatenate([first, second], axis=1), out)
    kept = model.carry[...]  # [layer][direction] -> h (B, H)
    assert jax.tree.map(jnp.shape, kept) == (((2, H),), ((2, H),))
    assert_close(jnp.stack([row[0] for row in kept]), h_n)
    assert_close(jnp.stack([row[0] for row in kept]), ref_finals)

    # reset_carry(rows=...) and resets[:, 0] both restart row 0 from the learned h0; row 1 streams on
    fresh_0 = _ref_stack(model, xs[:1, 3:], h0[:, :1])[1][0]
    for how in ("rows", "resets"):
        model.reset_carry(2)
        step(model, jnp.asarray(xs[:, :3]), no_resets)
        if how == "rows":
            model.reset_carry(rows=jnp.array([True, False]))
        restarted = step(model, jnp.asarray(xs[:, 3:]), no_resets.at[0, 0].set(how == "resets"))
        assert_close(restarted[0], fresh_0)
        assert_close(restarted[1], out[1, 3:])

    model.reset_carry()  # forget it: the next call starts afresh, from the learned h0
    assert model.carry[...] is None
    assert_close(model(jnp.asarray(xs[:, 3:])), _ref_stack(model, xs[:, 3:], h0)[1])


def test_stateful_errors_are_the_lstms():
    for option in ({"bidirectional": True}, {"reverse": True}):
        with pytest.raises(ValueError) as lstm_error:
            jl.nnx.LSTM(D, H, stateful=True, rngs=nnx.Rngs(0), **option)
        with pytest.raises(ValueError, match=r"stateful=True streams a sequence forward chunk by chunk") as gru_error:
            jl.nnx.GRU(D, H, stateful=True, rngs=nnx.Rngs(0), **option)
        assert str(gru_error.value) == str(lstm_error.value)
    model = jl.nnx.GRU(D, H, stateful=True, rngs=nnx.Rngs(0))
    model.reset_carry((2,))
    with pytest.raises(ValueError, match=r"the stored carry has batch shape \(2,\) but x has batch shape \(1,\)"):
        model(jnp.ones((1, 3, D)))
    with pytest.raises(ValueError, match=r"reset_carry\(rows=...\) with no carry kept yet needs batch_shape"):
        jl.nnx.GRU(D, H, stateful=True, rngs=nnx.Rngs(0)).reset_carry(rows=jnp.array([True, False]))
    not_stateful = jl.nnx.GRU(D, H, rngs=nnx.Rngs(0))
    assert not hasattr(not_stateful, "carry")  # nothing kept in nnx.state or checkpoints
    with pytest.raises(ValueError, match=r"reset_carry is for a stateful=True layer"):
        not_stateful.reset_carry((2,))
