"""jaxlstm.nnx: the NNX twins of jl.LSTM / jl.LSTMCell; same numbers as linen and the reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reference import assert_close, ref_cell, ref_last_output, ref_lstm, ref_stack

import jaxlstm as jl

B, T, D, H = 3, 5, 3, 4
LENGTHS = np.array([T, 0, 3], np.int32)


def _xs(rng, batch_shape=(B,)):
    return jnp.asarray(rng.standard_normal((*batch_shape, T, D)).astype(np.float32))


def _names(num_layers, bidirectional):
    return [
        f"layer_{layer}{suffix}"
        for layer in range(num_layers)
        for suffix in ([""] + (["_reverse"] if bidirectional else []))
    ]


def _randomize(model, rng, scale=0.6):
    for name in _names(model.num_layers, model.bidirectional):
        cell = getattr(model, name)
        for field in ("w_ih", "w_hh", "b"):
            param = getattr(cell, field)
            param[...] = jnp.asarray(scale * rng.standard_normal(param[...].shape), param[...].dtype)


def _weights(model):
    """``[layer][direction] -> (w_ih, w_hh, b)`` read from the module's attributes."""
    directions = 2 if model.bidirectional else 1
    return tuple(
        tuple(
            tuple(np.asarray(getattr(getattr(model, name), f)[...]) for f in ("w_ih", "w_hh", "b"))
            for name in _names(model.num_layers, model.bidirectional)[layer * directions : (layer + 1) * directions]
        )
        for layer in range(model.num_layers)
    )


def _copy_linen_params_into(model, linen_params):
    for name, cell in linen_params.items():
        for field, value in cell.items():
            getattr(getattr(model, name), field)[...] = value


def _random_carries(rng, num_layers, num_directions):
    return tuple(
        tuple(tuple(rng.standard_normal((B, H)).astype(np.float32) for _ in range(2)) for _ in range(num_directions))
        for _ in range(num_layers)
    )


def _as_lstm_carries(carries):
    return tuple(tuple(jl.LSTMCarry(jnp.asarray(h), jnp.asarray(c)) for h, c in layer) for layer in carries)


@functools.partial(nnx.jit, static_argnames=("deterministic",))
def run(model, x, seq_lengths=None, initial_carry=None, deterministic=None, rngs=None):
    """One compiled call per model configuration (eager calls re-trace every scan)."""
    return model(x, seq_lengths=seq_lengths, initial_carry=initial_carry, deterministic=deterministic, rngs=rngs)


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize(
    "num_layers, bidirectional, merge, return_sequences, expected",
    [
        (1, False, "concat", True, (B, T, H)),
        (2, False, "concat", False, (B, H)),
        (2, True, "concat", True, (B, T, 2 * H)),
        (2, True, "concat", False, (B, 2 * H)),
        (1, True, "sum", True, (B, T, H)),
        (2, True, "ave", False, (B, H)),
    ],
)
def test_output_shapes_and_attributes(num_layers, bidirectional, merge, return_sequences, expected):
    model = jl.nnx.LSTM(
        D,
        H,
        num_layers=num_layers,
        bidirectional=bidirectional,
        merge=merge,
        return_sequences=return_sequences,
        rngs=nnx.Rngs(0),
    )
    assert model(jnp.ones((B, T, D))).shape == expected
    width = 2 * H if (bidirectional and merge == "concat") else H
    params = nnx.state(model, nnx.Param)
    assert set(params.keys()) == set(_names(num_layers, bidirectional))
    for name in _names(num_layers, bidirectional):
        cell = getattr(model, name)
        fan_in = D if name.startswith("layer_0") else width
        assert cell.w_ih[...].shape == (fan_in, 4 * H)
        assert cell.w_hh[...].shape == (H, 4 * H)
        assert cell.b[...].shape == (4 * H,)
        np.testing.assert_array_equal(cell.b[...], np.repeat([0.0, 1.0, 0.0, 0.0], H))  # keras scheme


def test_return_carry_structure():
    model = jl.nnx.LSTM(D, H, num_layers=2, bidirectional=True, return_carry=True, rngs=nnx.Rngs(0))
    carries, out = model(jnp.ones((2, 3, T, D)))
    assert out.shape == (2, 3, T, 2 * H)
    assert len(carries) == 2 and all(len(layer) == 2 for layer in carries)
    for layer in carries:
        for carry in layer:
            assert isinstance(carry, jl.LSTMCarry)
            assert carry.h.shape == carry.c.shape == (2, 3, H)


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    "num_layers, bidirectional, merge, reverse",
    [(2, True, "concat", False), (1, True, "mul", False), (2, False, "concat", True)],
    ids=["bi-concat-2", "bi-mul-1", "reverse-2"],
)
def test_identical_to_linen_for_identical_weights(rng, num_layers, bidirectional, merge, reverse):
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, merge=merge, reverse=reverse, return_carry=True)
    linen = jl.LSTM(H, **kwargs)
    x = _xs(rng)
    linen_params = jax.tree.map(
        lambda p: jnp.asarray(0.6 * rng.standard_normal(p.shape), p.dtype), linen.init(jax.random.key(0), x)["params"]
    )
    model = jl.nnx.LSTM(D, H, **kwargs, rngs=nnx.Rngs(1))
    _copy_linen_params_into(model, linen_params)
    carries = _as_lstm_carries(_random_carries(rng, num_layers, 2 if bidirectional else 1))
    call = dict(seq_lengths=jnp.asarray(LENGTHS), initial_carry=carries)

    linen_carries, linen_out = linen.apply({"params": linen_params}, x, **call)
    nnx_carries, nnx_out = model(x, **call)

    np.testing.assert_array_equal(nnx_out, linen_out)
    for got, want in zip(jax.tree.leaves(nnx_carries), jax.tree.leaves(linen_carries), strict=True):
        np.testing.assert_array_equal(got, want)

    linen_last = linen.clone(return_sequences=False, return_carry=False).apply({"params": linen_params}, x, **call)
    model.return_sequences, model.return_carry = False, False
    np.testing.assert_array_equal(model(x, **call), linen_last)


@pytest.mark.parametrize("merge", ["concat", "ave"])
def test_matches_reference(rng, merge):
    model = jl.nnx.LSTM(D, H, num_layers=2, bidirectional=True, merge=merge, return_carry=True, rngs=nnx.Rngs(0))
    _randomize(model, rng)
    x = _xs(rng)
    carries = _random_carries(rng, 2, 2)
    finals, out = run(model, x, jnp.asarray(LENGTHS), _as_lstm_carries(carries))
    ref_finals, ref_hs = ref_stack(_weights(model), np.asarray(x), LENGTHS, merge, carries)
    assert_close(out, ref_hs)
    for layer in range(2):
        for direction in range(2):
            assert_close(finals[layer][direction].c, ref_finals[layer][direction][1])
    model.return_sequences, model.return_carry = False, False
    last = run(model, x, jnp.asarray(LENGTHS), _as_lstm_carries(carries))
    assert_close(last, ref_last_output(ref_finals, merge))


def test_jit_and_grad(rng):
    model = jl.nnx.LSTM(D, H, num_layers=2, bidirectional=True, merge="sum", rngs=nnx.Rngs(0))
    _randomize(model, rng)
    x = _xs(rng)
    lengths = jnp.asarray(LENGTHS)
    eager = model(x, seq_lengths=lengths)
    jitted = run(model, x, lengths)
    assert_close(jitted, np.asarray(eager))
    assert_close(eager, ref_stack(_weights(model), np.asarray(x), LENGTHS, "sum")[1])

    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x, seq_lengths=lengths) ** 2)))(model)
    leaves = jax.tree.leaves(grads)
    assert len(leaves) == 4 * 3
    assert all(np.all(np.isfinite(g)) and np.abs(g).max() > 0 for g in leaves)


# --------------------------------------------------------------------------- dropout


def test_dropout(rng):
    model = jl.nnx.LSTM(D, H, num_layers=2, dropout=0.5, rngs=nnx.Rngs(params=0, dropout=1))
    _randomize(model, rng)
    x = _xs(rng)
    lengths = jnp.asarray(LENGTHS)
    _, ref_hs = ref_stack(_weights(model), np.asarray(x), LENGTHS)

    assert_close(run(model, x, lengths, deterministic=True), ref_hs)
    # the default (deterministic=False, as nnx.Dropout) drops, from the module's own stream: calls differ
    first, second = np.asarray(run(model, x, lengths)), np.asarray(run(model, x, lengths))
    assert np.abs(first - ref_hs).max() > 1e-2
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first[2, 3:], 0.0)
    # explicit rngs at call time: reproducible
    a = run(model, x, lengths, rngs=nnx.Rngs(dropout=7))
    np.testing.assert_array_equal(run(model, x, lengths, rngs=nnx.Rngs(dropout=7)), a)
    key = jax.random.key(3)
    np.testing.assert_array_equal(run(model, x, lengths, rngs=key), run(model, x, lengths, rngs=key))
    assert not np.array_equal(run(model, x, lengths, rngs=jax.random.key(4)), run(model, x, lengths, rngs=key))
    # eval() / train() toggle it
    model.eval()
    assert_close(run(model, x, lengths), ref_hs)
    model.train()
    assert np.abs(np.asarray(run(model, x, lengths)) - ref_hs).max() > 1e-2


def test_dropout_falls_back_to_default_stream(rng):
    model = jl.nnx.LSTM(D, H, num_layers=2, dropout=0.5, rngs=nnx.Rngs(0))
    x = _xs(rng)
    _, ref_hs = ref_stack(_weights(model), np.asarray(x))
    assert np.abs(np.asarray(run(model, x)) - ref_hs).max() > 1e-3


# --------------------------------------------------------------------------- LSTMCell


def test_cell_matches_reference(rng):
    cell = jl.nnx.LSTMCell(D, H, rngs=nnx.Rngs(0))
    x = rng.standard_normal((2, 3, D)).astype(np.float32)
    carry0 = cell.initialize_carry(x.shape)
    assert carry0.h.shape == (2, 3, H) and carry0.h.dtype == jnp.float32
    h = rng.standard_normal((2, 3, H)).astype(np.float32)
    c = rng.standard_normal((2, 3, H)).astype(np.float32)
    carry, out = cell(jl.LSTMCarry(jnp.asarray(h), jnp.asarray(c)), jnp.asarray(x))
    ref_h, ref_c = ref_cell(*(np.asarray(a) for a in cell.params), h, c, x)
    assert_close(out, ref_h)
    assert_close(carry.c, ref_c)


def test_cell_in_nnx_rnn_equals_lstm(rng):
    cell = jl.nnx.LSTMCell(D, H, rngs=nnx.Rngs(0))
    rnn = nnx.RNN(cell, return_carry=True)
    x = _xs(rng)
    lengths = jnp.asarray(np.array([T, 1, 3], np.int32))
    carry, out = rnn(x, seq_lengths=lengths)
    final, hs = jl.lstm(cell.params, x, seq_lengths=lengths)
    for seq, length in enumerate(np.asarray(lengths)):  # Flax leaves garbage in padded steps
        assert_close(out[seq, :length], np.asarray(hs[seq, :length]))
    assert_close(carry.c, np.asarray(final.c))
    assert_close(hs, ref_lstm(*(np.asarray(a) for a in cell.params), np.asarray(x), seq_lengths=lengths)[2])
