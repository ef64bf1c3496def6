"""jaxlstm.stack: stacked and bidirectional LSTMs, merges, last output, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from reference import (
    assert_close,
    assert_tree_close,
    random_stack_weights,
    ref_last_output,
    ref_merge,
    ref_stack,
)

import jaxlstm as jl

B, T, D, H = 3, 5, 3, 4
LENGTHS = np.array([T, 0, 3], np.int32)

stacked_jit = jax.jit(
    jl.stacked_lstm, static_argnames=("merge", "dropout", "unroll", "reverse", "gradient", "masked_output")
)


def _stack(weights):
    return tuple(tuple(jl.LSTMParams(*(jnp.asarray(w) for w in d)) for d in layer) for layer in weights)


def _random_carries(rng, weights, batch_shape=(B,)):
    return tuple(
        tuple(tuple(rng.standard_normal((*batch_shape, H)).astype(np.float32) for _ in range(2)) for _ in layer)
        for layer in weights
    )


def _as_lstm_carries(carries):
    return tuple(tuple(jl.LSTMCarry(jnp.asarray(h), jnp.asarray(c)) for h, c in layer) for layer in carries)


def _check(finals, hs, ref_finals, ref_hs, merge):
    assert hs.shape == ref_hs.shape
    assert_close(hs, ref_hs, "hs")
    assert len(finals) == len(ref_finals)
    for layer, (got, want) in enumerate(zip(finals, ref_finals, strict=True)):
        assert len(got) == len(want), f"layer {layer}: {len(got)} directions"
        for direction, (carry, (ref_h, ref_c)) in enumerate(zip(got, want, strict=True)):
            assert isinstance(carry, jl.LSTMCarry)
            assert_close(carry.h, ref_h, f"finals[{layer}][{direction}].h")
            assert_close(carry.c, ref_c, f"finals[{layer}][{direction}].c")
    assert_close(jl.last_output(finals, merge), ref_last_output(ref_finals, merge), "last_output")


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize(
    "bidirectional, merge, width", [(False, "concat", H), (True, "concat", 2 * H), (True, "sum", H), (True, "ave", H)]
)
def test_init_stack_shapes(key, bidirectional, merge, width):
    stack = jl.init_stack(key, D, H, num_layers=3, bidirectional=bidirectional, merge=merge)
    assert len(stack) == 3
    for layer, directions in enumerate(stack):
        assert len(directions) == (2 if bidirectional else 1)
        for params in directions:
            assert isinstance(params, jl.LSTMParams)
            assert params.w_ih.shape == ((D if layer == 0 else width), 4 * H)
            assert params.w_hh.shape == (H, 4 * H)
            assert params.b.shape == (4 * H,)
            np.testing.assert_array_equal(params.b[H : 2 * H], 1.0)  # keras scheme by default
    # every cell gets its own draw
    w = [np.asarray(p.w_hh) for layer in stack for p in layer]
    assert all(not np.array_equal(a, b) for i, a in enumerate(w) for b in w[i + 1 :])


@pytest.mark.parametrize("merge", ["concat", "sum", "mul", "ave"])
def test_merge_directions(rng, merge):
    fwd = rng.standard_normal((2, 3, H)).astype(np.float32)
    bwd = rng.standard_normal((2, 3, H)).astype(np.float32)
    merged = jl.merge_directions(jnp.asarray(fwd), jnp.asarray(bwd), merge)
    assert merged.shape == (2, 3, 2 * H if merge == "concat" else H)
    assert_close(merged, ref_merge(fwd, bwd, merge))


def test_reference_merge_is_keras_bidirectional():
    """Guards the reference's merge against Keras' definition on hand values."""
    f, b = np.array([1.0, 2.0]), np.array([3.0, -4.0])
    np.testing.assert_array_equal(ref_merge(f, b, "concat"), [1, 2, 3, -4])
    np.testing.assert_array_equal(ref_merge(f, b, "sum"), [4, -2])
    np.testing.assert_array_equal(ref_merge(f, b, "mul"), [3, -8])
    np.testing.assert_array_equal(ref_merge(f, b, "ave"), [2, -1])


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("merge", ["concat", "sum", "mul", "ave"])
def test_bidirectional_two_layers_matches_reference(rng, merge):
    weights = random_stack_weights(rng, D, H, num_layers=2, bidirectional=True, merge=merge)
    xs = rng.standard_normal((B, T, D)).astype(np.float32)
    carries = _random_carries(rng, weights)

    finals, hs = stacked_jit(
        _stack(weights), jnp.asarray(xs), _as_lstm_carries(carries), seq_lengths=jnp.asarray(LENGTHS), merge=merge
    )

    assert hs.shape == (B, T, 2 * H if merge == "concat" else H)
    ref_finals, ref_hs = ref_stack(weights, xs, LENGTHS, merge, carries)
    _check(finals, hs, ref_finals, ref_hs, merge)
    np.testing.assert_array_equal(hs[2, 3:], 0.0)  # padded steps output zeros after the merge too


def test_bidirectional_without_lengths_or_carries(rng):
    weights = random_stack_weights(rng, D, H, num_layers=2, bidirectional=True, merge="concat")
    xs = rng.standard_normal((B, T, D)).astype(np.float32)
    finals, hs = stacked_jit(_stack(weights), jnp.asarray(xs), merge="concat")
    ref_finals, ref_hs = ref_stack(weights, xs, None, "concat")
    _check(finals, hs, ref_finals, ref_hs, "concat")


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_unidirectional_three_layers_matches_reference(rng, reverse):
    weights = random_stack_weights(rng, D, H, num_layers=3, bidirectional=False, merge="concat")
    xs = rng.standard_normal((B, T, D)).astype(np.float32)
    carries = _random_carries(rng, weights)
    finals, hs = stacked_jit(
        _stack(weights), jnp.asarray(xs), _as_lstm_carries(carries), seq_lengths=jnp.asarray(LENGTHS), reverse=reverse
    )
    ref_finals, ref_hs = ref_stack(weights, xs, LENGTHS, "concat", carries, reverse=reverse)
    _check(finals, hs, ref_finals, ref_hs, "concat")


def test_stack_with_several_batch_dims(rng):
    weights = random_stack_weights(rng, D, H, num_layers=2, bidirectional=True, merge="ave")
    xs = rng.standard_normal((2, 3, T, D)).astype(np.float32)
    lengths = np.array([[5, 0, 3], [1, 4, 2]], np.int32)
    finals, hs = stacked_jit(_stack(weights), jnp.asarray(xs), seq_lengths=jnp.asarray(lengths), merge="ave")
    assert hs.shape == (2, 3, T, H) and finals[1][1].h.shape == (2, 3, H)
    ref_finals, ref_hs = ref_stack(weights, xs, lengths, "ave")
    _check(finals, hs, ref_finals, ref_hs, "ave")


def test_single_layer_stack_equals_lstm(rng):
    weights = random_stack_weights(rng, D, H, num_layers=1, bidirectional=True, merge="concat")
    xs = jnp.asarray(rng.standard_normal((B, T, D)).astype(np.float32))
    stack = _stack(weights)
    finals, hs = jl.stacked_lstm(stack, xs, seq_lengths=jnp.asarray(LENGTHS))
    fwd_final, fwd = jl.lstm(stack[0][0], xs, seq_lengths=jnp.asarray(LENGTHS))
    bwd_final, bwd = jl.lstm(stack[0][1], xs, seq_lengths=jnp.asarray(LENGTHS), reverse=True)
    np.testing.assert_array_equal(hs, jnp.concatenate([fwd, bwd], axis=-1))
    np.testing.assert_array_equal(finals[0][0].c, fwd_final.c)
    np.testing.assert_array_equal(finals[0][1].c, bwd_final.c)


def test_last_output_is_last_valid_step_and_backward_step_zero(rng):
    """concat(forward h at each sequence's last valid step, backward h at step 0)."""
    weights = random_stack_weights(rng, D, H, num_layers=2, bidirectional=True, merge="concat")
    xs = rng.standard_normal((B, T, D)).astype(np.float32)
    finals, hs = stacked_jit(_stack(weights), jnp.asarray(xs), seq_lengths=jnp.asarray(LENGTHS), merge="concat")
    last = np.asarray(jl.last_output(finals, "concat"))
    assert last.shape == (B, 2 * H)
    hs = np.asarray(hs)
    for seq, length in enumerate(LENGTHS):
        if length == 0:  # nothing read: the (zero) initial carry
            np.testing.assert_array_equal(last[seq], 0.0)
            continue
        np.testing.assert_array_equal(last[seq, :H], hs[seq, length - 1, :H])
        np.testing.assert_array_equal(last[seq, H:], hs[seq, 0, H:])


# --------------------------------------------------------------------------- transformations


def test_jit_matches_eager(rng):
    weights = random_stack_weights(rng, D, H, num_layers=2, bidirectional=True, merge="mul")
    xs = jnp.asarray(rng.standard_normal((B, T, D)).astype(np.float32))
    args = (_stack(weights), xs)
    kwargs = dict(seq_lengths=jnp.asarray(LENGTHS), merge="mul")
    eager = jl.stacked_lstm(*args, **kwargs)
    jitted = stacked_jit(*args, **kwargs)
    assert_tree_close(jitted, jax.tree.map(np.asarray, eager))


def test_gradients_float64_bidirectional_stack(rng):
    weights = random_stack_weights(rng, 2, 2, num_layers=2, bidirectional=True, merge="concat", dtype=np.float64)
    xs = rng.standard_normal((2, 4, 2))
    lengths = np.array([4, 2])
    with jax.enable_x64(True):
        seq_lengths = jnp.asarray(lengths)

        @jax.jit
        def f(stack, xs):
            finals, hs = jl.stacked_lstm(stack, xs, seq_lengths=seq_lengths, merge="concat")
            return hs, jl.last_output(finals, "concat")

        stack = jax.tree.map(jnp.asarray, _stack(weights))
        hs, _ = f(stack, jnp.asarray(xs))
        assert hs.dtype == jnp.float64
        ref_finals, ref_hs = ref_stack(weights, xs, lengths, "concat")
        assert_close(hs, ref_hs)
        check_grads(f, (stack, jnp.asarray(xs)), order=1, modes=["rev"])


# --------------------------------------------------------------------------- dropout


def _dropout_probe(rng, batch, hidden):
    """A 2-layer stack whose second layer makes its (dropped-out) input visible.

    Layer 1: w_hh = 0, input j feeds only gate g of unit j, i and o open, f shut, so
    output[..., j] = tanh(tanh(input[..., j])): exactly ~0 where dropout zeroed the input.
    """
    layer0 = random_stack_weights(rng, D, hidden, num_layers=1, bidirectional=False, merge="concat")[0]
    w_ih = np.zeros((hidden, 4 * hidden), np.float32)
    w_ih[np.arange(hidden), 2 * hidden + np.arange(hidden)] = 1.0
    b = np.zeros(4 * hidden, np.float32)
    b[:hidden], b[hidden : 2 * hidden], b[3 * hidden :] = 30.0, -30.0, 30.0
    layer1 = ((w_ih, np.zeros((hidden, 4 * hidden), np.float32), b),)
    xs = rng.standard_normal((batch, T, D)).astype(np.float32)
    return (layer0, layer1), xs


def test_dropout_rate_scale_and_placement(rng, key):
    rate = 0.3
    weights, xs = _dropout_probe(rng, batch=16, hidden=5)
    _, hs = stacked_jit(_stack(weights), jnp.asarray(xs), dropout=rate, dropout_key=key)
    hs = np.asarray(hs)
    kept = np.abs(hs) > 1e-6
    dropped_fraction = 1.0 - kept.mean()  # 480 activations
    assert abs(dropped_fraction - rate) < 0.08, dropped_fraction

    # replaying that mask (scaled by 1 / (1 - rate)) on layer 1's input in the reference reproduces
    # every output: dropout hits the inter-layer activations only, with inverted scaling
    _, ref_hs = ref_stack(weights, xs, layer_input_scales={1: kept / (1.0 - rate)})
    assert_close(hs, ref_hs)
    # and it is not a no-op
    _, no_dropout = ref_stack(weights, xs)
    assert np.abs(hs - no_dropout).max() > 1e-2


def test_dropout_off_cases_and_keys(rng, key):
    weights = random_stack_weights(rng, D, H, num_layers=2, bidirectional=True, merge="sum")
    xs = jnp.asarray(rng.standard_normal((B, T, D)).astype(np.float32))
    stack = _stack(weights)
    _, ref_hs = ref_stack(weights, np.asarray(xs), LENGTHS, "sum")
    lengths = jnp.asarray(LENGTHS)

    def run(**kwargs):
        return np.asarray(stacked_jit(stack, xs, seq_lengths=lengths, merge="sum", **kwargs)[1])

    assert_close(run(dropout=0.5), ref_hs)  # no key: no dropout
    assert_close(run(dropout=0.0, dropout_key=key), ref_hs)  # rate 0
    with_key = run(dropout=0.5, dropout_key=key)
    np.testing.assert_array_equal(run(dropout=0.5, dropout_key=key), with_key)  # same key, same masks
    assert np.abs(with_key - ref_hs).max() > 1e-2
    assert not np.array_equal(run(dropout=0.5, dropout_key=jax.random.fold_in(key, 1)), with_key)
    np.testing.assert_array_equal(with_key[2, 3:], 0.0)  # padding stays zero

    one_layer = _stack(weights[:1])
    _, ref_one = ref_stack(weights[:1], np.asarray(xs), LENGTHS, "sum")
    assert_close(stacked_jit(one_layer, xs, seq_lengths=lengths, merge="sum", dropout=0.5, dropout_key=key)[1], ref_one)


# --------------------------------------------------------------------------- deep stacks: one scan over layers


def test_deep_bidirectional_stack_wider_input_matches_reference(rng):
    """D > F: layer 0 runs on its own, layers 1..3 under one scan over their stacked weights."""
    weights = random_stack_weights(rng, 9, H, num_layers=4, bidirectional=True, merge="concat")
    xs = rng.standard_normal((B, T, 9)).astype(np.float32)
    carries = _random_carries(rng, weights)
    finals, hs = stacked_jit(
        _stack(weights), jnp.asarray(xs), _as_lstm_carries(carries), seq_lengths=jnp.asarray(LENGTHS)
    )
    ref_finals, ref_hs = ref_stack(weights, xs, LENGTHS, "concat", carries)
    _check(finals, hs, ref_finals, ref_hs, "concat")


def test_deep_stack_gradients_equal_autodiff_float64(rng):
    """Layer 0 padded into the scan (D <= F): its w_ih and the inputs get exactly their own gradient."""
    with jax.enable_x64(True):
        weights = random_stack_weights(rng, 2, 3, num_layers=3, bidirectional=True, merge="sum", dtype=np.float64)
        stack = tuple(tuple(jl.LSTMParams(*(jnp.asarray(w) for w in d)) for d in layer) for layer in weights)
        xs = jnp.asarray(rng.standard_normal((2, 4, 2)))

        def loss(stack, xs, gradient):
            _, hs = jl.stacked_lstm(stack, xs, merge="sum", seq_lengths=jnp.array([4, 2]), gradient=gradient)
            return jnp.sum(jnp.sin(hs))

        fused = jax.grad(loss, argnums=(0, 1))(stack, xs, "fused")
        autodiff = jax.grad(loss, argnums=(0, 1))(stack, xs, "autodiff")
        check_grads(lambda s, x: loss(s, x, "fused"), (stack, xs), order=1, modes=["rev"])
    assert jax.tree.map(jnp.shape, fused) == jax.tree.map(jnp.shape, (stack, xs))
    for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(autodiff), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_deep_stack_dropout_draws_each_layer_as_the_layer_by_layer_rule(rng, key):
    """The scan over layers draws layer l's input dropout from the l-th split of the key, as a
    stack run one layer at a time does."""
    weights = random_stack_weights(rng, D, H, num_layers=4, bidirectional=False, merge="concat")
    xs = jnp.asarray(rng.standard_normal((B, T, D)).astype(np.float32))
    stack = _stack(weights)
    _, hs = stacked_jit(stack, xs, dropout=0.4, dropout_key=key)
    expected, remaining = xs, key
    for layer in range(4):
        if layer > 0:
            remaining, layer_key = jax.random.split(remaining)
            keep = jax.random.bernoulli(layer_key, 0.6, expected.shape)
            expected = jnp.where(keep, expected / 0.6, 0.0)
        _, expected = jl.stacked_lstm(stack[layer : layer + 1], expected)
    assert_close(hs, expected)


# --------------------------------------------------------------------------- layers stacked for the scan


def test_deep_stack_takes_forward_mode_and_vmap(rng):
    """The stacking is plain JAX (no custom rule): jvp and vmap go through a scanned stack."""
    stack = _stack(random_stack_weights(rng, D, H, num_layers=4, bidirectional=False, merge="concat"))
    xs = jnp.asarray(rng.standard_normal((2, T, D)).astype(np.float32))

    def f(xs):
        return jnp.sum(jl.stacked_lstm(stack, xs, gradient="autodiff")[1] ** 2)

    tangent = jnp.asarray(rng.standard_normal(xs.shape).astype(np.float32))
    _, jvp = jax.jvp(f, (xs,), (tangent,))
    np.testing.assert_allclose(jvp, jnp.sum(jax.grad(f)(xs) * tangent), rtol=1e-4)
    batched = jax.vmap(lambda x: jl.stacked_lstm(stack, x)[1])(jnp.stack([xs, 2 * xs]))
    np.testing.assert_allclose(batched[1], jl.stacked_lstm(stack, 2 * xs)[1], rtol=1e-6)
