"""jaxlstm.lstm: one layer over whole sequences, against the NumPy reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads
from reference import assert_close, random_weights, ref_lstm

import jaxlstm as jl

B, T, D, H = 3, 5, 3, 4
LENGTHS = np.array([T, 0, 3], np.int32)  # a full sequence, an empty one, a padded one

# one compiled function for the whole module (compiles once per static reverse/unroll and shape)
lstm_jit = jax.jit(jl.lstm, static_argnames=("reverse", "unroll"))


def _params(weights):
    return jl.LSTMParams(*(jnp.asarray(w) for w in weights))


def _data(rng, batch_shape=(B,), time=T, dtype=np.float32):
    weights = random_weights(rng, D, H, dtype)
    xs = rng.standard_normal((*batch_shape, time, D)).astype(dtype)
    h0 = rng.standard_normal((*batch_shape, H)).astype(dtype)
    c0 = rng.standard_normal((*batch_shape, H)).astype(dtype)
    return weights, xs, h0, c0


def _check_against_reference(final, hs, ref):
    ref_h, ref_c, ref_hs = ref
    assert isinstance(final, jl.LSTMCarry)
    assert hs.shape == ref_hs.shape and final.h.shape == ref_h.shape and final.c.shape == ref_c.shape
    assert_close(hs, ref_hs, "hs")
    assert_close(final.h, ref_h, "final.h")
    assert_close(final.c, ref_c, "final.c")


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("with_carry", [False, True], ids=["zero_carry", "given_carry"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["no_lengths", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_lstm_matches_reference(rng, reverse, with_lengths, with_carry):
    weights, xs, h0, c0 = _data(rng)
    lengths = LENGTHS if with_lengths else None
    carry = jl.LSTMCarry(jnp.asarray(h0), jnp.asarray(c0)) if with_carry else None

    final, hs = jl.lstm(
        _params(weights),
        jnp.asarray(xs),
        carry,
        seq_lengths=None if lengths is None else jnp.asarray(lengths),
        reverse=reverse,
    )

    assert hs.dtype == final.h.dtype == final.c.dtype == jnp.float32
    ref = ref_lstm(*weights, xs, h0 if with_carry else None, c0 if with_carry else None, lengths, reverse)
    _check_against_reference(final, hs, ref)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_lstm_unbatched_sequence(rng, reverse):
    weights, xs, h0, c0 = _data(rng, batch_shape=())
    carry = jl.LSTMCarry(jnp.asarray(h0), jnp.asarray(c0))
    final, hs = lstm_jit(_params(weights), jnp.asarray(xs), carry, seq_lengths=jnp.asarray(3), reverse=reverse)
    assert hs.shape == (T, H) and final.h.shape == (H,)
    _check_against_reference(final, hs, ref_lstm(*weights, xs, h0, c0, np.array(3), reverse))


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_lstm_several_batch_dims(rng, reverse):
    batch_shape = (2, 3)
    weights, xs, h0, c0 = _data(rng, batch_shape)
    lengths = np.array([[5, 0, 3], [1, 4, 2]], np.int32)
    carry = jl.LSTMCarry(jnp.asarray(h0), jnp.asarray(c0))

    final, hs = lstm_jit(_params(weights), jnp.asarray(xs), carry, seq_lengths=jnp.asarray(lengths), reverse=reverse)

    assert hs.shape == (2, 3, T, H) and final.h.shape == final.c.shape == (2, 3, H)
    _check_against_reference(final, hs, ref_lstm(*weights, xs, h0, c0, lengths, reverse))
    # and the same as the batch flattened to one dim
    flat_final, flat_hs = lstm_jit(
        _params(weights),
        jnp.asarray(xs.reshape(6, T, D)),
        jl.LSTMCarry(jnp.asarray(h0.reshape(6, H)), jnp.asarray(c0.reshape(6, H))),
        seq_lengths=jnp.asarray(lengths.reshape(6)),
        reverse=reverse,
    )
    assert_close(hs, np.asarray(flat_hs).reshape(2, 3, T, H))
    assert_close(final.c, np.asarray(flat_final.c).reshape(2, 3, H))


def test_reverse_without_lengths_is_flip_forward_flip(rng):
    """A second, reference-free check of reverse: flip time, run forward, flip back."""
    weights, xs, h0, c0 = _data(rng)
    params, carry = _params(weights), jl.LSTMCarry(jnp.asarray(h0), jnp.asarray(c0))
    final_r, hs_r = lstm_jit(params, jnp.asarray(xs), carry, reverse=True)
    final_f, hs_f = lstm_jit(params, jnp.asarray(xs[:, ::-1]), carry, reverse=False)
    assert_close(hs_r, np.asarray(hs_f)[:, ::-1])
    assert_close(final_r.h, np.asarray(final_f.h))
    assert_close(final_r.c, np.asarray(final_f.c))


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_length_zero_and_full_length(rng, reverse):
    weights, xs, h0, c0 = _data(rng)
    params, carry = _params(weights), jl.LSTMCarry(jnp.asarray(h0), jnp.asarray(c0))
    final, hs = lstm_jit(params, jnp.asarray(xs), carry, seq_lengths=jnp.asarray(LENGTHS), reverse=reverse)
    # length 0: the initial carry comes back untouched and every output is exactly zero
    np.testing.assert_array_equal(final.h[1], h0[1])
    np.testing.assert_array_equal(final.c[1], c0[1])
    np.testing.assert_array_equal(hs[1], np.zeros((T, H)))
    # length 3: the padded steps output exactly zero
    np.testing.assert_array_equal(hs[2, 3:], np.zeros((T - 3, H)))
    # length T: the same as no seq_lengths at all
    final_all, hs_all = lstm_jit(params, jnp.asarray(xs), carry, reverse=reverse)
    assert_close(hs[0], np.asarray(hs_all[0]))
    assert_close(final.c[0], np.asarray(final_all.c[0]))


# --------------------------------------------------------------------------- transformations


def test_jit_matches_eager(rng):
    weights, xs, h0, c0 = _data(rng)
    args = (_params(weights), jnp.asarray(xs), jl.LSTMCarry(jnp.asarray(h0), jnp.asarray(c0)))
    for reverse in (False, True):
        eager_final, eager_hs = jl.lstm(*args, seq_lengths=jnp.asarray(LENGTHS), reverse=reverse)
        jit_final, jit_hs = lstm_jit(*args, seq_lengths=jnp.asarray(LENGTHS), reverse=reverse)
        assert_close(jit_hs, np.asarray(eager_hs))
        assert_close(jit_final.h, np.asarray(eager_final.h))
        assert_close(jit_final.c, np.asarray(eager_final.c))


@pytest.mark.parametrize("unroll, reverse", [(2, True), (T + 1, False)])
def test_unroll_does_not_change_results(rng, unroll, reverse):
    weights, xs, _, _ = _data(rng)
    args = (_params(weights), jnp.asarray(xs))
    final_1, hs_1 = lstm_jit(*args, seq_lengths=jnp.asarray(LENGTHS), reverse=reverse)
    final_u, hs_u = lstm_jit(*args, seq_lengths=jnp.asarray(LENGTHS), reverse=reverse, unroll=unroll)
    assert_close(hs_u, np.asarray(hs_1))
    assert_close(final_u.c, np.asarray(final_1.c))


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_vmap_of_single_sequences_equals_batched_call(rng, reverse):
    weights, xs, h0, c0 = _data(rng)
    params = _params(weights)

    def one(x, length, h, c):  # x: (T, D), length: (), h, c: (H,)
        return jl.lstm(params, x, jl.LSTMCarry(h, c), seq_lengths=length, reverse=reverse)

    v_final, v_hs = jax.vmap(one)(jnp.asarray(xs), jnp.asarray(LENGTHS), jnp.asarray(h0), jnp.asarray(c0))
    b_final, b_hs = lstm_jit(
        params,
        jnp.asarray(xs),
        jl.LSTMCarry(jnp.asarray(h0), jnp.asarray(c0)),
        seq_lengths=jnp.asarray(LENGTHS),
        reverse=reverse,
    )
    assert v_hs.shape == b_hs.shape == (B, T, H)
    assert_close(v_hs, np.asarray(b_hs))
    assert_close(v_final.h, np.asarray(b_final.h))
    assert_close(v_final.c, np.asarray(b_final.c))


@pytest.mark.parametrize("gradient", ["fused", "autodiff"])
def test_zero_length_time_axis_returns_the_initial_carry(rng, gradient):
    """T = 0: no step runs; outputs are (B, 0, H), the final carry is the initial one, and the
    gradients are those of the initial carry alone."""
    weights, _, h0, c0 = _data(rng)
    params, carry = _params(weights), jl.LSTMCarry(jnp.asarray(h0), jnp.asarray(c0))
    xs = jnp.zeros((B, 0, D))

    def loss(params, carry):
        final, hs = jl.lstm(params, xs, carry, gradient=gradient)
        return jnp.sum(final.h * final.c) + jnp.sum(hs)

    final, hs = jl.lstm(params, xs, carry, gradient=gradient)
    assert hs.shape == (B, 0, H)
    np.testing.assert_array_equal(final.h, h0)
    np.testing.assert_array_equal(final.c, c0)
    d_params, d_carry = jax.grad(loss, argnums=(0, 1))(params, carry)
    assert all(not np.any(np.asarray(leaf)) for leaf in jax.tree.leaves(d_params))
    assert_close(d_carry.h, c0)
    assert_close(d_carry.c, h0)


@pytest.mark.parametrize("gradient", ["fused", "autodiff"])
@pytest.mark.parametrize("batch_shape", [(0,), (2, 0)], ids=["empty-batch", "empty-inner-batch"])
def test_empty_batch(rng, gradient, batch_shape):
    """A batch with no sequences gives empty outputs and gradients of the right shapes."""
    params = _params(random_weights(rng, D, H, np.float32))
    xs = jnp.ones((*batch_shape, T, D))
    final, hs = jl.lstm(params, xs, gradient=gradient)
    assert hs.shape == (*batch_shape, T, H) and final.h.shape == final.c.shape == (*batch_shape, H)
    d_params, d_xs = jax.grad(lambda p, x: jnp.sum(jl.lstm(p, x, gradient=gradient)[1]), argnums=(0, 1))(params, xs)
    assert d_xs.shape == xs.shape
    assert all(not np.any(np.asarray(leaf)) for leaf in jax.tree.leaves(d_params))


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_per_example_gradients_under_vmap(rng, reverse):
    """vmap of grad (per-example gradients) through the fused backward pass: each example's
    gradient equals autodiff's, and their sum equals the gradient of the batched call."""
    weights, xs, h0, c0 = _data(rng, dtype=np.float64)
    w_out = rng.standard_normal((T, H))
    with jax.enable_x64(True):
        params, lengths = _params(weights), jnp.asarray(LENGTHS)

        def loss(params, x, length, h, c, gradient="fused"):  # one sequence: x (T, D), h, c (H,)
            final, hs = jl.lstm(params, x, jl.LSTMCarry(h, c), seq_lengths=length, reverse=reverse, gradient=gradient)
            return jnp.sum(hs * w_out) + jnp.sum(final.c)

        args = (jnp.asarray(xs), lengths, jnp.asarray(h0), jnp.asarray(c0))
        per_example = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1, 3, 4)), in_axes=(None, 0, 0, 0, 0)))
        fused = per_example(params, *args)
        autodiff = jax.jit(
            jax.vmap(jax.grad(functools.partial(loss, gradient="autodiff"), argnums=(0, 1, 3, 4)), (None, 0, 0, 0, 0))
        )(params, *args)
        for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(autodiff), strict=True):
            assert a.shape[0] == B
            assert_close(a, np.asarray(b))

        def batched(params, xs, h, c):
            final, hs = jl.lstm(params, xs, jl.LSTMCarry(h, c), seq_lengths=lengths, reverse=reverse)
            return jnp.sum(hs * w_out[None]) + jnp.sum(final.c)

        whole = jax.jit(jax.grad(batched))(params, args[0], args[2], args[3])
        for a, b in zip(jax.tree.leaves(fused[0]), jax.tree.leaves(whole), strict=True):
            assert_close(np.sum(np.asarray(a), axis=0), np.asarray(b))


@pytest.mark.parametrize(
    "reverse, gradient", [(False, "fused"), (True, "fused"), (True, "autodiff")], ids=["forward", "reverse", "autodiff"]
)
def test_gradients_float64(rng, reverse, gradient):
    """Reverse-mode gradients w.r.t. every input, checked numerically in float64 (both gradient paths)."""
    weights, xs, h0, c0 = _data(rng, batch_shape=(3,), time=4, dtype=np.float64)
    lengths = np.array([4, 2, 0])
    with jax.enable_x64(True):
        seq_lengths = jnp.asarray(lengths)  # int64 under x64

        @jax.jit
        def f(w_ih, w_hh, b, xs, h0, c0):
            final, hs = jl.lstm(
                jl.LSTMParams(w_ih, w_hh, b),
                xs,
                jl.LSTMCarry(h0, c0),
                seq_lengths=seq_lengths,
                reverse=reverse,
                gradient=gradient,
            )
            return final.h, final.c, hs

        args = tuple(jnp.asarray(a) for a in (*weights, xs, h0, c0))
        assert all(a.dtype == jnp.float64 for a in args)
        h, c, hs = f(*args)
        # float64 all the way: the float64 tolerance against the reference
        ref_h, ref_c, ref_hs = ref_lstm(*weights, xs, h0, c0, lengths, reverse)
        assert hs.dtype == jnp.float64
        assert_close(hs, ref_hs)
        assert_close(h, ref_h)
        assert_close(c, ref_c)
        check_grads(f, args, order=1, modes=["rev"])


def _jacobian_norms(params, xs, length, reverse):
    """|| d hs[t] / d xs[s] || for every (t, s), and || d final / d xs[s] ||."""

    def run(xs):
        final, hs = jl.lstm(params, xs, seq_lengths=length, reverse=reverse)
        return hs, final.c

    j_hs, j_final = jax.jit(jax.jacrev(run))(xs)  # (T, H, T, D), (H, T, D)
    return np.abs(np.asarray(j_hs)).sum(axis=(1, 3)), np.abs(np.asarray(j_final)).sum(axis=(0, 2))


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_causality(rng, reverse):
    """Forward: hs[t] depends on xs[:t+1] only. Reverse: on xs[t:] only. Padded steps: on nothing."""
    weights, xs, _, _ = _data(rng, batch_shape=())
    params = _params(weights)
    s, t = np.meshgrid(np.arange(T), np.arange(T))  # [t, s]

    norms, _ = _jacobian_norms(params, jnp.asarray(xs), None, reverse)
    influences = (s <= t) if not reverse else (s >= t)
    assert np.all(norms[~influences] == 0.0), norms
    assert np.all(norms[influences] > 0.0), norms

    length = 3
    norms, final_norms = _jacobian_norms(params, jnp.asarray(xs), jnp.asarray(length), reverse)
    influences = influences & (s < length) & (t < length)
    assert np.all(norms[~influences] == 0.0), norms
    assert np.all(norms[influences] > 0.0), norms
    np.testing.assert_array_equal(final_norms[length:], 0.0)
    assert np.all(final_norms[:length] > 0.0)


# --------------------------------------------------------------------------- padding


def _with_garbage(xs, lengths, garbage):
    padded = np.array(xs)
    for seq, length in enumerate(lengths):
        padded[seq, length:] = garbage[seq, length:]
    return padded


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_padding_invariance_outputs_and_gradients(rng, reverse):
    weights, xs, h0, c0 = _data(rng)
    garbage = (1e3 * rng.standard_normal(xs.shape)).astype(np.float32)
    dirty = _with_garbage(xs, LENGTHS, garbage)
    params, carry = _params(weights), jl.LSTMCarry(jnp.asarray(h0), jnp.asarray(c0))

    def loss(params, xs):
        final, hs = jl.lstm(params, xs, carry, seq_lengths=jnp.asarray(LENGTHS), reverse=reverse)
        return jnp.sum(hs**2) + jnp.sum(final.h) + jnp.sum(final.c), (final, hs)

    grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
    (g_params, g_xs), (final, hs) = grad_fn(params, jnp.asarray(xs))
    (g_params_d, g_xs_d), (final_d, hs_d) = grad_fn(params, jnp.asarray(dirty))

    np.testing.assert_array_equal(hs_d, hs)
    np.testing.assert_array_equal(final_d.h, final.h)
    np.testing.assert_array_equal(final_d.c, final.c)
    for a, b in zip(g_params_d, g_params, strict=True):
        assert_close(a, np.asarray(b))
    assert_close(g_xs_d, np.asarray(g_xs))
    for seq, length in enumerate(LENGTHS):  # no gradient flows into padding
        np.testing.assert_array_equal(g_xs_d[seq, length:], 0.0)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_padding_may_hold_nan_and_inf(rng, reverse):
    weights, xs, h0, c0 = _data(rng)
    garbage = np.where(rng.random(xs.shape) < 0.5, np.nan, np.inf).astype(np.float32)
    dirty = _with_garbage(xs, LENGTHS, garbage)
    carry = jl.LSTMCarry(jnp.asarray(h0), jnp.asarray(c0))
    final, hs = lstm_jit(_params(weights), jnp.asarray(dirty), carry, seq_lengths=jnp.asarray(LENGTHS), reverse=reverse)
    _check_against_reference(final, hs, ref_lstm(*weights, xs, h0, c0, LENGTHS, reverse))


lengths_strategy = st.lists(st.integers(0, T), min_size=B, max_size=B).map(lambda v: np.array(v, np.int32))


@settings(max_examples=15, deadline=None, derandomize=True)
@given(lengths=lengths_strategy, reverse=st.booleans(), seed=st.integers(0, 2**16))
def test_property_matches_reference_for_any_lengths(lengths, reverse, seed):
    rng = np.random.default_rng(seed)
    weights, xs, h0, c0 = _data(rng)
    carry = jl.LSTMCarry(jnp.asarray(h0), jnp.asarray(c0))
    final, hs = lstm_jit(_params(weights), jnp.asarray(xs), carry, seq_lengths=jnp.asarray(lengths), reverse=reverse)
    _check_against_reference(final, hs, ref_lstm(*weights, xs, h0, c0, lengths, reverse))


@settings(max_examples=15, deadline=None, derandomize=True)
@given(lengths=lengths_strategy, reverse=st.booleans(), seed=st.integers(0, 2**16))
def test_property_padding_invariance(lengths, reverse, seed):
    rng = np.random.default_rng(seed)
    weights, xs, _, _ = _data(rng)
    dirty = _with_garbage(xs, lengths, (100 * rng.standard_normal(xs.shape)).astype(np.float32))
    run = functools.partial(lstm_jit, _params(weights), seq_lengths=jnp.asarray(lengths), reverse=reverse)
    final, hs = run(jnp.asarray(xs))
    final_d, hs_d = run(jnp.asarray(dirty))
    np.testing.assert_array_equal(hs_d, hs)
    np.testing.assert_array_equal(final_d.h, final.h)
    np.testing.assert_array_equal(final_d.c, final.c)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint8, np.int64])
def test_seq_lengths_any_integer_dtype(rng, dtype):
    """seq_lengths of any integer dtype work (also under strict dtype promotion)."""
    weights, xs, _, _ = _data(rng)
    final, hs = lstm_jit(_params(weights), jnp.asarray(xs), seq_lengths=np.asarray(LENGTHS, dtype), reverse=True)
    _check_against_reference(final, hs, ref_lstm(*weights, xs, None, None, LENGTHS, reverse=True))


def test_seq_lengths_int32_under_x64(rng):
    """Under x64 the default int is int64; int32 lengths (e.g. from a data pipeline) still work."""
    weights, xs, _, _ = _data(rng, dtype=np.float64)
    with jax.enable_x64(True):
        final, hs = jl.lstm(_params(weights), jnp.asarray(xs), seq_lengths=jnp.asarray(LENGTHS, jnp.int32))
        _check_against_reference(final, hs, ref_lstm(*weights, xs, None, None, LENGTHS))


@pytest.mark.parametrize("gradient", ["fused", "autodiff"])
def test_nan_in_padded_steps_does_not_reach_the_gradients(gradient):
    params = jl.init_params(jax.random.key(0), 3, 4)
    xs = jnp.ones((2, 5, 3)).at[1, 3:].set(jnp.nan)
    seq_lengths = jnp.array([5, 3])
    grads = jax.grad(lambda p: jl.lstm(p, xs, seq_lengths=seq_lengths, gradient=gradient)[1].sum())(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    clean = jax.grad(lambda p: jl.lstm(p, jnp.nan_to_num(xs), seq_lengths=seq_lengths)[1].sum())(params)
    for g, c in zip(grads, clean, strict=True):
        assert_close(g, c)
