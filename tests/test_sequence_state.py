"""Sequence state beyond the anchors: masks, resets, masked outputs, learnable and streamed
initial carries, custom activations — against the NumPy reference in reference_state.py.

Kept fast on a small CPU: tiny shapes, and one jitted function per static configuration,
reused across tests (each test feeds it several mask/reset patterns as data).
"""

import functools
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads
import jaxlstm.loops
from reference import assert_close, random_stack_weights, random_weights, ref_stack
from reference_state import hard_sigmoid, ref_lstm_state, ref_stack_state, relu

import jaxlstm as jl

B, T, D, H = 3, 6, 3, 4
ROOT = Path(__file__).resolve().parents[1]

# Fixed patterns: a row that begins with False, an all-False row, a row that begins with True.
MASK = np.array(
    [
        [0, 1, 1, 0, 1, 1],
        [0, 0, 0, 0, 0, 0],
        [1, 0, 1, 1, 0, 1],
    ],
    bool,
)
# Resets at step 0, in the middle, at the last step, and at consecutive steps.
RESETS = np.array(
    [
        [1, 0, 0, 1, 0, 0],
        [0, 0, 1, 0, 0, 1],
        [0, 1, 1, 0, 0, 1],
    ],
    bool,
)
ALL = np.ones((B, T), bool)
NONE = np.zeros((B, T), bool)
FULL = np.full((B,), T, np.int32)
LENGTHS = np.array([T, 2, 4], np.int32)


# --------------------------------------------------------------------------- helpers


@functools.partial(jax.jit, static_argnames=("reverse", "masked_output", "gradient", "gate_fn", "activation_fn"))
def run(params, xs, carry, reset_carry, lengths, mask, resets, **static):
    """``jl.lstm`` with every per-step option given as data: one compile per static configuration."""
    return jl.lstm(params, xs, carry, seq_lengths=lengths, mask=mask, resets=resets, reset_carry=reset_carry, **static)


def _params(weights):
    return jl.LSTMParams(*(jnp.asarray(w) for w in weights))


def _carry(h, c):
    return jl.LSTMCarry(jnp.asarray(h), jnp.asarray(c))


def _data(rng, dtype=np.float32):
    weights = random_weights(rng, D, H, dtype)
    xs = rng.standard_normal((B, T, D)).astype(dtype)
    h0, c0, rh, rc = (rng.standard_normal((B, H)).astype(dtype) for _ in range(4))
    return weights, xs, (h0, c0), (rh, rc)


def _random_patterns(rng, draws=2):
    """Random masks and resets, still with a row that begins masked and an all-masked row."""
    for _ in range(draws):
        mask = rng.random((B, T)) < 0.6
        mask[0, 0], mask[1] = False, False
        resets = rng.random((B, T)) < 0.35
        resets[0, 0], resets[2, T - 1] = True, True
        yield mask, resets


def _check(final, hs, ref, what=""):
    ref_h, ref_c, ref_hs = ref
    assert hs.shape == ref_hs.shape and final.h.shape == ref_h.shape
    assert_close(hs, ref_hs, f"{what} hs")
    assert_close(final.h, ref_h, f"{what} final.h")
    assert_close(final.c, ref_c, f"{what} final.c")


def _stack_args(rng, bidirectional, num_layers=2):
    directions = 2 if bidirectional else 1
    weights = random_stack_weights(rng, D, H, num_layers, bidirectional, "concat")
    carries, resets = (
        tuple(
            tuple(tuple(rng.standard_normal((B, H)).astype(np.float32) for _ in "hc") for _ in range(directions))
            for _ in range(num_layers)
        )
        for _ in range(2)
    )
    return weights, carries, resets


def _random_variables(layer, x, rng, collections=("params",)):
    """A linen module's variables with random values, shaped by an abstract ``init`` (no loop runs)."""
    shapes = jax.eval_shape(layer.init, jax.random.key(0), x)
    return {
        name: jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape).astype(a.dtype)), shapes[name])
        for name in collections
    }


def _one_direction_stack(params, num_layers):
    """A one-direction module's ``params`` as reference weights, and its learned h0, c0 broadcast to (B, H)."""
    names = [f"layer_{layer}" for layer in range(num_layers)]
    weights = tuple((tuple(params[name][k] for k in ("w_ih", "w_hh", "b")),) for name in names)
    learned = tuple(
        ((np.broadcast_to(params[name]["h0"], (B, H)), np.broadcast_to(params[name]["c0"], (B, H))),) for name in names
    )
    return weights, learned


def _jl_stack(weights):
    return tuple(tuple(_params(w) for w in layer) for layer in weights)


def _jl_carries(carries):
    return tuple(tuple(_carry(h, c) for h, c in layer) for layer in carries)


# --------------------------------------------------------------------------- one layer against the reference


@pytest.mark.parametrize("masked_output", ["zeros", "previous"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_lstm_matches_reference(rng, reverse, masked_output):
    weights, xs, (h0, c0), (rh, rc) = _data(rng)
    args = (_params(weights), jnp.asarray(xs), _carry(h0, c0), _carry(rh, rc))
    static = dict(reverse=reverse, masked_output=masked_output)
    patterns = [(MASK, RESETS, FULL), (MASK, NONE, FULL), (ALL, RESETS, FULL), (MASK, RESETS, LENGTHS)]
    patterns += [(m, r, FULL) for m, r in _random_patterns(rng)]
    for mask, resets, lengths in patterns:
        final, hs = run(*args, jnp.asarray(lengths), jnp.asarray(mask), jnp.asarray(resets), **static)
        ref = ref_lstm_state(
            *weights, xs, h0, c0, mask=mask, seq_lengths=lengths, resets=resets, reset_h=rh, reset_c=rc, **static
        )
        _check(final, hs, ref, f"mask={mask.astype(int).tolist()} resets={resets.astype(int).tolist()}")
        # a step that does not count outputs exactly zeros, or exactly the carry's h it kept
        counted = mask & (np.arange(T) < lengths[:, None])
        if masked_output == "zeros":
            np.testing.assert_array_equal(np.asarray(hs)[~counted], 0.0)
    # an all-False row keeps the initial carry, bit for bit (no resets)
    final, hs = run(*args, jnp.asarray(FULL), jnp.asarray(MASK), jnp.asarray(NONE), **static)
    np.testing.assert_array_equal(final.h[1], h0[1])
    np.testing.assert_array_equal(final.c[1], c0[1])
    np.testing.assert_array_equal(hs[1], np.broadcast_to(h0[1] if masked_output == "previous" else 0.0, (T, H)))


def test_all_true_mask_and_no_resets_change_nothing(rng):
    """The plain reference of reference.py (no masks at all) agrees with an all-True mask and no resets."""
    from reference import ref_lstm

    weights, xs, (h0, c0), (rh, rc) = _data(rng)
    for reverse in (False, True):
        final, hs = run(
            _params(weights),
            jnp.asarray(xs),
            _carry(h0, c0),
            _carry(rh, rc),
            jnp.asarray(LENGTHS),
            jnp.asarray(ALL),
            jnp.asarray(NONE),
            reverse=reverse,
            masked_output="zeros",
        )
        _check(final, hs, ref_lstm(*weights, xs, h0, c0, LENGTHS, reverse))


def test_seq_lengths_and_mask_count_a_step_when_both_allow(rng):
    weights, xs, (h0, c0), (rh, rc) = _data(rng)
    args = (_params(weights), jnp.asarray(xs), _carry(h0, c0), _carry(rh, rc))
    both = run(*args, jnp.asarray(LENGTHS), jnp.asarray(MASK), jnp.asarray(NONE), masked_output="previous")
    combined = MASK & (np.arange(T) < LENGTHS[:, None])
    as_mask = run(*args, jnp.asarray(FULL), jnp.asarray(combined), jnp.asarray(NONE), masked_output="previous")
    for a, b in zip(jax.tree.leaves(both), jax.tree.leaves(as_mask), strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- stacks


stack_jit = jax.jit(jl.stacked_lstm, static_argnames=("masked_output", "reverse", "merge"))


@pytest.mark.parametrize(
    "bidirectional, reverse, masked_output",
    [(True, False, "zeros"), (True, False, "previous"), (False, True, "previous")],
    ids=["bidirectional-zeros", "bidirectional-previous", "reverse-previous"],
)
def test_stacked_matches_reference(rng, bidirectional, reverse, masked_output):
    weights, carries, reset_carries = _stack_args(rng, bidirectional)
    xs = rng.standard_normal((B, T, D)).astype(np.float32)
    for mask, resets in [(MASK, RESETS), *_random_patterns(rng, 1)]:
        finals, hs = stack_jit(
            _jl_stack(weights),
            jnp.asarray(xs),
            _jl_carries(carries),
            reset_carries=_jl_carries(reset_carries),
            seq_lengths=jnp.asarray(LENGTHS),
            mask=jnp.asarray(mask),
            resets=jnp.asarray(resets),
            masked_output=masked_output,
            reverse=reverse,
        )
        ref_finals, ref_hs = ref_stack_state(
            weights,
            xs,
            carries,
            reset_carries,
            mask=mask,
            seq_lengths=LENGTHS,
            resets=resets,
            masked_output=masked_output,
            reverse=reverse,
        )
        assert_close(hs, ref_hs, "hs")
        for layer, row in enumerate(ref_finals):
            for direction, (h, c) in enumerate(row):
                assert_close(finals[layer][direction].h, h, f"[{layer}][{direction}].h")
                assert_close(finals[layer][direction].c, c, f"[{layer}][{direction}].c")


def test_packed_bidirectional_row_equals_each_segment_on_its_own(rng):
    """Sequences packed in one row and separated by resets: a 2-layer bidirectional stack gives,
    in both directions, what each sequence gives on its own (reference.py's plain stack)."""
    weights = random_stack_weights(rng, D, H, 2, True, "concat")
    xs = rng.standard_normal((B, T, D)).astype(np.float32)
    resets = np.array([[0, 0, 1, 0, 0, 1], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)  # 2+3+1, 6, 1 x 6
    finals, hs = jax.jit(jl.stacked_lstm)(_jl_stack(weights), jnp.asarray(xs), resets=jnp.asarray(resets))
    hs = np.asarray(hs)
    for row in range(B):
        starts = [t for t in range(T) if t == 0 or resets[row, t]]
        for start, end in zip(starts, starts[1:] + [T], strict=True):
            seg_finals, seg_hs = ref_stack(weights, xs[row, start:end])
            assert_close(hs[row, start:end], seg_hs, f"row {row} segment {start}:{end}")
        # the forward final carry belongs to the last segment, the backward one to the first
        last_finals = ref_stack(weights, xs[row, starts[-1] :])[0]
        first_finals = ref_stack(weights, xs[row, : (starts + [T])[1]])[0]
        for layer in range(2):
            assert_close(finals[layer][0].h[row], last_finals[layer][0][0], f"row {row} forward final")
            assert_close(finals[layer][1].h[row], first_finals[layer][1][0], f"row {row} backward final")


# --------------------------------------------------------------------------- transformations and invariances


def test_jit_matches_eager_and_vmap_matches_batch(rng):
    weights, xs, (h0, c0), (rh, rc) = _data(rng)
    params = _params(weights)
    data = (jnp.asarray(xs), jnp.asarray(h0), jnp.asarray(c0), jnp.asarray(rh), jnp.asarray(rc))
    flags = (jnp.asarray(LENGTHS), jnp.asarray(MASK), jnp.asarray(RESETS))
    batched = run(params, data[0], _carry(*data[1:3]), _carry(*data[3:]), *flags, masked_output="previous")

    eager = jl.lstm(
        params,
        data[0],
        _carry(*data[1:3]),
        reset_carry=_carry(*data[3:]),
        seq_lengths=flags[0],
        mask=flags[1],
        resets=flags[2],
        masked_output="previous",
    )

    def one(x, h, c, rh, rc, length, mask, resets):  # a single sequence: x (T, D), mask (T,)
        return jl.lstm(
            params,
            x,
            _carry(h, c),
            reset_carry=_carry(rh, rc),
            seq_lengths=length,
            mask=mask,
            resets=resets,
            masked_output="previous",
        )

    mapped = jax.jit(jax.vmap(one))(*data, *flags)
    for what, other in (("eager", eager), ("vmap", mapped)):
        for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(batched), strict=True):
            assert_close(a, np.asarray(b), what)


@pytest.mark.parametrize("masked_output", ["zeros", "previous"])
def test_masked_steps_are_ignored_whatever_they_hold(rng, masked_output):
    """Padding invariance: garbage at the steps that don't count changes no output and no final carry."""
    weights, xs, (h0, c0), (rh, rc) = _data(rng)
    counted = MASK & (np.arange(T) < LENGTHS[:, None])
    garbage = np.where(counted[..., None], xs, 1e4 * rng.standard_normal(xs.shape)).astype(np.float32)
    for reverse in (False, True):
        clean, dirty = (
            run(
                _params(weights),
                jnp.asarray(x),
                _carry(h0, c0),
                _carry(rh, rc),
                jnp.asarray(LENGTHS),
                jnp.asarray(MASK),
                jnp.asarray(RESETS),
                reverse=reverse,
                masked_output=masked_output,
            )
            for x in (xs, garbage)
        )
        for a, b in zip(jax.tree.leaves(clean), jax.tree.leaves(dirty), strict=True):
            np.testing.assert_array_equal(a, b)
    # the same through a bidirectional stack
    stack = _jl_stack(random_stack_weights(rng, D, H, 2, True, "concat"))
    outs = [
        stack_jit(
            stack,
            jnp.asarray(x),
            seq_lengths=jnp.asarray(LENGTHS),
            mask=jnp.asarray(MASK),
            resets=jnp.asarray(RESETS),
            masked_output=masked_output,
        )
        for x in (xs, garbage)
    ]
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1]), strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize(
    "with_mask, with_resets, masked_output, reverse",
    [
        (True, True, "zeros", False),
        (True, True, "previous", True),
        (True, False, "previous", False),
        (False, True, "zeros", True),
        (False, False, "zeros", False),
        (False, False, "zeros", True),
    ],
    ids=[
        "mask-resets-zeros",
        "mask-resets-previous-reverse",
        "mask-previous",
        "resets-reverse",
        "plain",
        "plain-reverse",
    ],
)
# The fused backward pass runs time in chunks of ceil(rows / B) steps: with 12 rows, one whole
# chunk of 4 steps and a remainder of 2, visited in either order.
@pytest.mark.parametrize("chunk_rows", [None, 12], ids=["one-chunk", "chunks+remainder"])
def test_fused_gradient_equals_autodiff(rng, monkeypatch, with_mask, with_resets, masked_output, reverse, chunk_rows):
    if chunk_rows is not None:
        monkeypatch.setattr(jaxlstm.loops, "BACKWARD_CHUNK_ROWS", chunk_rows)
    weights, xs, (h0, c0), (rh, rc) = _data(rng, np.float64)
    w_hs, w_h, w_c = rng.standard_normal((B, T, H)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    with jax.enable_x64(True):
        mask = jnp.asarray(MASK) if with_mask else None
        resets = jnp.asarray(RESETS) if with_resets else None
        lengths = jnp.asarray(LENGTHS) if with_mask else None

        def loss(params, xs, carry, reset_carry, gradient):
            final, hs = jl.lstm(
                params,
                xs,
                carry,
                reset_carry=reset_carry,
                seq_lengths=lengths,
                mask=mask,
                resets=resets,
                masked_output=masked_output,
                reverse=reverse,
                gradient=gradient,
            )
            return jnp.sum(hs * w_hs) + jnp.sum(final.h * w_h) + jnp.sum(final.c * w_c)

        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)), static_argnames="gradient")
        args = (_params(weights), jnp.asarray(xs), _carry(h0, c0), _carry(rh, rc))
        fused, autodiff = grad(*args, gradient="fused"), grad(*args, gradient="autodiff")
        assert jax.tree.leaves(fused)[0].dtype == jnp.float64
        for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(autodiff), strict=True):
            assert_close(a, np.asarray(b))
        if with_resets:  # the reset carry receives gradient at every reset, the initial one only before them
            assert np.abs(np.asarray(fused[3].h)).max() > 0
        # (test_gradients_reach_learned_initial_carry checks the fused gradient against finite differences)


def test_gradients_reach_learned_initial_carry(rng):
    """h0 and c0 get the gradient of every sequence start and every reset; it matches finite differences."""
    xs = rng.standard_normal((B, T, D))
    weights = rng.standard_normal((B, T, H))
    with jax.enable_x64(True):
        layer = jl.LSTM(H, learn_initial_carry=True, masked_output="previous", param_dtype=jnp.float64)
        params = layer.init(jax.random.key(0), jnp.asarray(xs))["params"]
        assert params["layer_0"]["h0"].shape == params["layer_0"]["c0"].shape == (H,)
        np.testing.assert_array_equal(params["layer_0"]["h0"], 0.0)  # zeros at first
        params = jax.tree.map(lambda a: jnp.asarray(0.5 * rng.standard_normal(a.shape)), params)

        @jax.jit
        def loss(params):
            y = layer.apply({"params": params}, jnp.asarray(xs), mask=jnp.asarray(MASK), resets=jnp.asarray(RESETS))
            return jnp.sum(y * weights)

        grads = jax.grad(loss)(params)
        assert np.abs(np.asarray(grads["layer_0"]["h0"])).min() > 0
        assert np.abs(np.asarray(grads["layer_0"]["c0"])).min() > 0
        check_grads(loss, (params,), order=1, modes=["rev"])


# --------------------------------------------------------------------------- learnable initial carry


def test_learned_initial_carry_starts_and_restarts_every_row(rng, key):
    xs = rng.standard_normal((B, T, D)).astype(np.float32)
    layer = jl.LSTM(H, num_layers=2, learn_initial_carry=True, masked_output="previous", return_carry=True)
    params = _random_variables(layer, jnp.asarray(xs), rng)["params"]
    assert sorted(params["layer_1"]) == ["b", "c0", "h0", "w_hh", "w_ih"]
    apply = jax.jit(layer.apply)
    weights, learned = _one_direction_stack(params, 2)
    carries, y = apply({"params": params}, jnp.asarray(xs), mask=jnp.asarray(MASK), resets=jnp.asarray(RESETS))
    ref_finals, ref_hs = ref_stack_state(weights, xs, learned, mask=MASK, resets=RESETS, masked_output="previous")
    assert_close(y, ref_hs)
    assert_close(carries[1][0].c, ref_finals[1][0][1])

    # a user initial_carry wins, for the start and for the resets
    user = tuple((tuple(rng.standard_normal((B, H)).astype(np.float32) for _ in "hc"),) for _ in range(2))
    _, y = apply(
        {"params": params},
        jnp.asarray(xs),
        mask=jnp.asarray(MASK),
        resets=jnp.asarray(RESETS),
        initial_carry=_jl_carries(user),
    )
    assert_close(y, ref_stack_state(weights, xs, user, mask=MASK, resets=RESETS, masked_output="previous")[1])


def test_nnx_learned_initial_carry_matches_linen(rng, key):
    xs = jnp.asarray(rng.standard_normal((B, T, D)).astype(np.float32))
    model = jl.nnx.LSTM(D, H, learn_initial_carry=True, bidirectional=True, rngs=nnx.Rngs(0))
    assert model.layer_0_reverse.h0[...].shape == (H,)
    np.testing.assert_array_equal(model.layer_0.c0[...], 0.0)
    params = {}
    for name in ("layer_0", "layer_0_reverse"):
        cell = getattr(model, name)
        for field in ("h0", "c0"):
            getattr(cell, field)[...] = jnp.asarray(rng.standard_normal(H).astype(np.float32))
        params[name] = {field: getattr(cell, field)[...] for field in ("w_ih", "w_hh", "b", "h0", "c0")}
    linen = jl.LSTM(H, learn_initial_carry=True, bidirectional=True)
    flags = dict(mask=jnp.asarray(MASK), resets=jnp.asarray(RESETS))
    assert_close(
        nnx.jit(lambda m, x: m(x, **flags))(model, xs), np.asarray(linen.apply({"params": params}, xs, **flags))
    )


# --------------------------------------------------------------------------- stateful streaming


def _stream_data(rng):
    xs = rng.standard_normal((B, T, D)).astype(np.float32)
    mask = MASK.copy()
    mask[1, 4] = True  # one counted step in the second chunk of row 1
    return jnp.asarray(xs), jnp.asarray(mask), jnp.asarray(RESETS)


def test_linen_streaming_in_chunks_equals_the_whole_sequence(rng, key):
    xs, mask, resets = _stream_data(rng)
    layer = jl.LSTM(H, num_layers=2, stateful=True, learn_initial_carry=True)
    params = _random_variables(layer, xs[:, :3], rng)["params"]
    step = jax.jit(functools.partial(layer.apply, mutable=["carry"]))

    whole, _ = step({"params": params}, xs, mask=mask, resets=resets)
    weights, learned = _one_direction_stack(params, 2)
    assert_close(whole, ref_stack_state(weights, np.asarray(xs), learned, mask=np.asarray(mask), resets=RESETS)[1])

    first, state = step({"params": params}, xs[:, :3], mask=mask[:, :3], resets=resets[:, :3])
    second, state = step({"params": params, **state}, xs[:, 3:], mask=mask[:, 3:], resets=resets[:, 3:])
    assert_close(jnp.concatenate([first, second], axis=1), np.asarray(whole))

    # resets[:, 0] = True restarts row 2 from the learned carry; rows 0 and 1 stream on
    _, state = step({"params": params}, xs[:, :3], mask=mask[:, :3], resets=resets[:, :3])
    restart = resets[:, 3:].at[2, 0].set(True)
    restarted, _ = step({"params": params, **state}, xs[:, 3:], mask=mask[:, 3:], resets=restart)
    fresh, _ = step({"params": params}, xs[:, 3:], mask=mask[:, 3:], resets=restart)
    assert_close(restarted[2], np.asarray(fresh[2]))
    assert np.abs(np.asarray(restarted[2] - whole[2, 3:])).max() > 1e-3
    assert_close(restarted[:2], np.asarray(whole[:2, 3:]))

    # the stored carry belongs to the batch it was computed for
    with pytest.raises(ValueError, match=r"stateful=True keeps one carry per sequence.*\.md#stateful-streaming"):
        layer.apply({"params": params, **state}, xs[:2, 3:], mutable=["carry"])


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "nnx.jit"])
def test_nnx_streaming_in_chunks_equals_the_whole_sequence(rng, jit):
    xs, mask, resets = _stream_data(rng)
    model = jl.nnx.LSTM(D, H, num_layers=2, stateful=True, learn_initial_carry=True, rngs=nnx.Rngs(1))
    for name in ("layer_0", "layer_1"):
        getattr(model, name).h0[...] = jnp.asarray(rng.standard_normal(H).astype(np.float32))

    def call(model, x, mask, resets):
        return model(x, mask=mask, resets=resets)

    call = nnx.jit(call) if jit else call
    whole = call(model, xs, mask, resets)
    model.reset_carry()
    first = call(model, xs[:, :3], mask[:, :3], resets[:, :3])
    second = call(model, xs[:, 3:], mask[:, 3:], resets[:, 3:])
    assert_close(jnp.concatenate([first, second], axis=1), np.asarray(whole))
    assert model.carry.get_value()[1][0].h.shape == (B, H)
    if not jit:
        return  # the eager calls retrace every time: check the row restart once, compiled

    # resets[:, 0] = True restarts one row; reset_carry() restarts them all
    model.reset_carry()
    call(model, xs[:, :3], mask[:, :3], resets[:, :3])
    restart = resets[:, 3:].at[2, 0].set(True)
    restarted = call(model, xs[:, 3:], mask[:, 3:], restart)
    model.reset_carry()
    fresh = call(model, xs[:, 3:], mask[:, 3:], restart)
    assert_close(restarted[2], np.asarray(fresh[2]))
    assert np.abs(np.asarray(restarted[2] - whole[2, 3:])).max() > 1e-3
    assert_close(restarted[:2], np.asarray(whole[:2, 3:]))


# --------------------------------------------------------------------------- custom activations


def test_custom_activations_match_reference(rng, key):
    weights, xs, (h0, c0), (rh, rc) = _data(rng)
    acts = dict(gate_fn=jax.nn.hard_sigmoid, activation_fn=jax.nn.relu)
    ref_acts = dict(gate_fn=hard_sigmoid, activation_fn=relu)
    args = (_params(weights), jnp.asarray(xs), _carry(h0, c0), _carry(rh, rc), jnp.asarray(LENGTHS))
    flags = (jnp.asarray(MASK), jnp.asarray(RESETS))
    final, hs = run(*args, *flags, masked_output="previous", **acts)
    ref = ref_lstm_state(
        *weights,
        xs,
        h0,
        c0,
        mask=MASK,
        seq_lengths=LENGTHS,
        resets=RESETS,
        reset_h=rh,
        reset_c=rc,
        masked_output="previous",
        **ref_acts,
    )
    _check(final, hs, ref)

    # gradient="fused" falls back to autodiff for them: same gradients
    def loss(params, gradient):
        return jnp.sum(run(params, *args[1:], *flags, masked_output="previous", gradient=gradient, **acts)[1])

    fused, autodiff = (jax.grad(loss)(args[0], g) for g in ("fused", "autodiff"))
    for a, b in zip(fused, autodiff, strict=True):
        assert_close(a, np.asarray(b))

    # the modules pass them to every layer and direction
    layer = jl.LSTM(H, bidirectional=True, **acts)
    variables = _random_variables(layer, jnp.asarray(xs), rng)
    y = jax.jit(layer.apply)(variables, jnp.asarray(xs), mask=flags[0])
    stack = (
        tuple(
            tuple(variables["params"][name][k] for k in ("w_ih", "w_hh", "b"))
            for name in ("layer_0", "layer_0_reverse")
        ),
    )
    assert_close(y, ref_stack_state(stack, xs, mask=MASK, **ref_acts)[1])
    model = jl.nnx.LSTM(D, H, rngs=nnx.Rngs(0), **acts)
    assert model.layer_0.gate_fn is jax.nn.hard_sigmoid
    nnx_weights = ((tuple(getattr(model.layer_0, k)[...] for k in ("w_ih", "w_hh", "b")),),)
    y = nnx.jit(lambda m, x, r: m(x, resets=r))(model, jnp.asarray(xs), flags[1])
    assert_close(y, ref_stack_state(nnx_weights, xs, resets=RESETS, **ref_acts)[1])


# --------------------------------------------------------------------------- last step, module call kwargs


def test_return_sequences_false_gives_each_rows_last_counted_step(rng, key):
    xs = jnp.asarray(rng.standard_normal((B, T, D)).astype(np.float32))
    layer = jl.LSTM(H, bidirectional=True, merge="sum", return_sequences=False)
    variables = _random_variables(layer, xs, rng)
    last = jax.jit(layer.apply)(variables, xs, mask=jnp.asarray(MASK))
    seqs = jl.LSTM(H, bidirectional=True, return_carry=True)  # same variables, "concat"
    carries, y = jax.jit(seqs.apply)(variables, xs, mask=jnp.asarray(MASK))
    # forward: the h of the last counted step; backward: the h of the first counted step (read last)
    for row in range(B):
        counted = np.flatnonzero(MASK[row])
        if counted.size:
            np.testing.assert_array_equal(carries[0][0].h[row], y[row, counted[-1], :H])
            np.testing.assert_array_equal(carries[0][1].h[row], y[row, counted[0], H:])
    assert_close(last, np.asarray(carries[0][0].h + carries[0][1].h))
    np.testing.assert_array_equal(last[1], 0.0)  # the all-masked row: the zero initial carries


# --------------------------------------------------------------------------- Keras


keras = None


def _keras():
    global keras
    if keras is None:
        os.environ.setdefault("KERAS_BACKEND", "jax")
        keras = pytest.importorskip("keras")
        if keras.backend.backend() != "jax":
            pytest.skip("Keras parity needs KERAS_BACKEND=jax")
    return keras


def _keras_call(layer, *args, **kwargs):
    # Keras' own jax code relies on implicit rank and dtype promotion, which the suite makes errors
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        return layer(*args, **kwargs)


def _keras_built(layer, seed=0):
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        layer.build((None, T, D))
        rng = np.random.default_rng(seed)
        layer.set_weights([(0.5 * rng.standard_normal(w.shape)).astype(np.float32) for w in layer.get_weights()])
    return layer


def _assert_keras_parity(layer, x, mask, expected_masked_output):
    from jaxlstm.interop import KerasLSTM, from_keras

    module, variables = from_keras(layer)
    lstm = module.lstm if isinstance(module, KerasLSTM) else module
    assert lstm.masked_output == expected_masked_output
    ours = jax.jit(module.apply)(variables, jnp.asarray(x), mask=jnp.asarray(mask))
    theirs = _keras_call(layer, x, mask=mask)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        assert_close(a, np.asarray(b))


@pytest.mark.parametrize(
    "options",
    [
        dict(return_sequences=True, return_state=True),
        dict(go_backwards=True, return_sequences=False, return_state=True),
    ],
    ids=["sequences", "go_backwards-last"],
)
def test_keras_lstm_masks_repeat_the_previous_output(rng, options):
    """A standalone Keras LSTM (its default scan) writes the previous output, h, at masked steps."""
    keras = _keras()
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    layer = _keras_built(keras.layers.LSTM(H, **options))
    masks = [MASK] if options.get("go_backwards") else [MASK, next(_random_patterns(rng, 1))[0]]
    for mask in masks:
        _assert_keras_parity(layer, x, mask, "previous")


def test_keras_bidirectional_masks_write_zeros(rng):
    keras = _keras()
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    layer = _keras_built(keras.layers.Bidirectional(keras.layers.LSTM(H, return_sequences=True), merge_mode="concat"))
    _assert_keras_parity(layer, x, MASK, "zeros")
    # Keras' unrolled loop ignores zero_output_for_mask: even inside Bidirectional it repeats the previous output
    unrolled = keras.layers.Bidirectional(keras.layers.LSTM(H, return_sequences=True, unroll=True), merge_mode="ave")
    _assert_keras_parity(_keras_built(unrolled), x, MASK, "previous")
    # the last step: each direction's last counted step, whatever masked steps output
    last = keras.layers.Bidirectional(keras.layers.LSTM(H, unroll=True, return_state=True), merge_mode="mul")
    _assert_keras_parity(_keras_built(last), x, MASK, "previous")


@pytest.mark.parametrize(
    "recurrent_activation, activation", [("hard_sigmoid", "relu"), ("sigmoid", "relu"), ("hard_sigmoid", "tanh")]
)
def test_keras_activations_convert_exactly(rng, recurrent_activation, activation):
    keras = _keras()
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    options = dict(recurrent_activation=recurrent_activation, activation=activation, return_sequences=True, unroll=True)
    layer = _keras_built(keras.layers.LSTM(H, **options))
    _assert_keras_parity(layer, x, MASK, "previous")
    if recurrent_activation == "hard_sigmoid" and activation == "relu":
        bidirectional = _keras_built(keras.layers.Bidirectional(keras.layers.LSTM(H, **options), merge_mode="sum"))
        _assert_keras_parity(bidirectional, x, MASK, "previous")


# --------------------------------------------------------------------------- bad input


def test_bad_masks_and_resets_are_named(rng, key):
    params = jl.init_params(key, D, H)
    xs = jnp.ones((B, T, D))
    for name in ("mask", "resets"):
        with pytest.raises(ValueError, match=rf"{name} must have shape \(\*batch, time\) = \(3, 6\).*got \(3, 5\)"):
            jl.lstm(params, xs, **{name: jnp.ones((B, T - 1), bool)})
        with pytest.raises(ValueError, match=rf"{name} must have shape .*got \(6,\).*\.md#masks-and-resets"):
            jl.lstm(params, xs, **{name: jnp.ones((T,), bool)})
        with pytest.raises(TypeError, match=rf"{name} must have dtype bool, got int32"):
            jl.lstm(params, xs, **{name: jnp.ones((B, T), jnp.int32)})
        with pytest.raises(TypeError, match=rf"{name} must have dtype bool, got float32"):
            jl.stacked_lstm(((params,),), xs, **{name: jnp.ones((B, T), jnp.float32)})
        with pytest.raises(TypeError, match=rf"{name} must be a JAX or NumPy array"):
            jl.lstm(params, xs, **{name: [[True] * T] * B})
    layer = jl.LSTM(H)
    variables = _random_variables(layer, xs, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"mask must have shape"):
        layer.apply(variables, xs, mask=jnp.ones((B, T + 1), bool))
    with pytest.raises(TypeError, match=r"resets must have dtype bool"):
        jl.nnx.LSTM(D, H, rngs=nnx.Rngs(0))(xs, resets=jnp.zeros((B, T), jnp.int32))


def test_bad_module_options_are_named(key):
    xs = jnp.ones((B, T, D))
    params = jl.init_params(key, D, H)
    with pytest.raises(ValueError, match=r"masked_output must be one of 'zeros', 'previous', got 'last'"):
        jl.lstm(params, xs, masked_output="last")
    with pytest.raises(ValueError, match=r"masked_output must be one of"):
        jl.stacked_lstm(((params,),), xs, masked_output="zero")
    with pytest.raises(ValueError, match=r"masked_output must be one of"):
        jl.LSTM(H, masked_output="Previous").init(key, xs)
    with pytest.raises(TypeError, match=r"masked_output must be a str, one of 'zeros', 'previous', got NoneType"):
        jl.nnx.LSTM(D, H, masked_output=None, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"stateful=True .*bidirectional=True"):
        jl.LSTM(H, stateful=True, bidirectional=True).init(key, xs)
    with pytest.raises(ValueError, match=r"stateful=True .*bidirectional=True"):
        jl.nnx.LSTM(D, H, stateful=True, bidirectional=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"stateful=True .*reverse=True"):
        jl.LSTM(H, stateful=True, reverse=True).init(key, xs)

    wrong = ((jl.zeros_carry(H, (B + 1,)),),)
    with pytest.raises(
        ValueError, match=r"initial_carry\[0\]\[0\]\.h must have shape \(\*batch, hidden_size\) = \(3, 4\)"
    ):
        jl.LSTM(H, learn_initial_carry=True).init(key, xs, initial_carry=wrong)
    with pytest.raises(ValueError, match=r"initial_carry\[0\]\[0\]\.h must have shape"):
        jl.nnx.LSTM(D, H, learn_initial_carry=True, rngs=nnx.Rngs(0))(xs, initial_carry=wrong)
    with pytest.raises(ValueError, match=r"initial_carry must be nested like the stack"):
        jl.LSTM(H, learn_initial_carry=True, num_layers=2).init(key, xs, initial_carry=wrong)


# --------------------------------------------------------------------------- the guide


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for heading in re.findall(r"^#+\s+(.+?)\s*$", markdown, flags=re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return anchors


def test_the_guide_has_the_anchors_errors_point_at():
    """The guide's headings give the anchors the mask, resets and stateful errors name, and every
    pointer into it from the library (literal, or through a STATE_GUIDE constant) exists."""
    anchors = _anchors((ROOT / "docs" / "sequence-state.md").read_text())
    assert {"masks-and-resets", "stateful-streaming"} <= anchors
    named = set()
    for source in (ROOT / "jaxlstm").rglob("*.py"):
        text = source.read_text()
        named |= set(re.findall(r"sequence-state\.md#([\w-]+)", text))
        named |= set(re.findall(r"_see\(\s*\"([\w-]+)\",\s*(?:_checks\.)?STATE_GUIDE\s*\)", text))
    assert named <= anchors, named - anchors
