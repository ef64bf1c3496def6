"""jaxlstm.cell: lstm_cell, init_params, zeros_carry, against the NumPy reference."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import assert_close, random_weights, ref_cell

import jaxlstm as jl


def _params(weights):
    return jl.LSTMParams(*(jnp.asarray(w) for w in weights))


# --------------------------------------------------------------------------- the reference itself


def test_reference_cell_hand_computed():
    """Guards the reference: D = H = 1, every gate pre-activation chosen by hand."""
    w_ih = np.array([[1.0, 2.0, 3.0, 4.0]])  # (1, 4)
    w_hh = np.array([[0.5, -0.5, 0.25, -0.25]])  # (1, 4)
    b = np.array([0.1, 0.2, 0.3, 0.4])
    h, c, x = np.array([2.0]), np.array([-1.0]), np.array([0.5])
    z = [0.5 * 1.0 + 2.0 * 0.5 + 0.1, 0.5 * 2.0 - 2.0 * 0.5 + 0.2, 0.5 * 3.0 + 2.0 * 0.25 + 0.3, 0.5 * 4.0 - 0.5 + 0.4]
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    c_new = sig(z[1]) * -1.0 + sig(z[0]) * math.tanh(z[2])
    h_new = sig(z[3]) * math.tanh(c_new)
    got_h, got_c = ref_cell(w_ih, w_hh, b, h, c, x)
    assert_close(got_c, [c_new])  # float64 row of the tolerance table
    assert_close(got_h, [h_new])


# --------------------------------------------------------------------------- lstm_cell


@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3)], ids=["unbatched", "batch3", "batch2x3"])
def test_lstm_cell_matches_reference(rng, batch_shape):
    d, hid = 4, 5
    weights = random_weights(rng, d, hid)
    h = rng.standard_normal((*batch_shape, hid)).astype(np.float32)
    c = rng.standard_normal((*batch_shape, hid)).astype(np.float32)
    x = rng.standard_normal((*batch_shape, d)).astype(np.float32)

    carry, out = jl.lstm_cell(_params(weights), jl.LSTMCarry(jnp.asarray(h), jnp.asarray(c)), jnp.asarray(x))

    ref_h, ref_c = ref_cell(*weights, h, c, x)
    assert isinstance(carry, jl.LSTMCarry)
    assert carry.h.shape == carry.c.shape == out.shape == (*batch_shape, hid)
    assert out.dtype == carry.h.dtype == carry.c.dtype == jnp.float32
    assert_close(carry.h, ref_h)
    assert_close(carry.c, ref_c)
    np.testing.assert_array_equal(out, carry.h)


def test_lstm_cell_gate_order_is_i_f_g_o(rng):
    """Only the forget gate open (f = 1, i = 0): the cell state passes through unchanged.

    With the gate order shuffled (e.g. i and f swapped) c' would be tanh(g), not c.
    """
    hid = 3
    big = 30.0
    b = np.zeros(4 * hid, np.float32)
    b[0:hid] = -big  # input gate closed
    b[hid : 2 * hid] = big  # forget gate open
    b[3 * hid :] = big  # output gate open
    params = jl.LSTMParams(jnp.zeros((2, 4 * hid)), jnp.zeros((hid, 4 * hid)), jnp.asarray(b))
    c = jnp.asarray(rng.standard_normal((2, hid)).astype(np.float32))
    carry, h = jl.lstm_cell(params, jl.LSTMCarry(jnp.zeros((2, hid)), c), jnp.ones((2, 2)))
    assert_close(carry.c, np.asarray(c))
    assert_close(h, np.tanh(np.asarray(c, np.float64)))


def test_lstm_cell_under_jit_and_grad(rng):
    weights = random_weights(rng, 3, 2)
    x = rng.standard_normal((2, 3)).astype(np.float32)

    def loss(params, x):
        carry, h = jl.lstm_cell(params, jl.zeros_carry(2, (2,)), x)
        return jnp.sum(h) + jnp.sum(carry.c)

    eager = jax.grad(loss)(_params(weights), jnp.asarray(x))
    jitted = jax.jit(jax.grad(loss))(_params(weights), jnp.asarray(x))
    # finite differences of the float64 reference on one entry of w_ih
    eps = 1e-6
    w_plus, w_minus = [w.astype(np.float64) for w in weights], [w.astype(np.float64) for w in weights]
    w_plus[0][1, 5] += eps
    w_minus[0][1, 5] -= eps
    zeros = np.zeros((2, 2))

    def ref_loss(w):
        h, c = ref_cell(*w, zeros, zeros, x)
        return h.sum() + c.sum()

    fd = (ref_loss(w_plus) - ref_loss(w_minus)) / (2 * eps)
    assert_close(eager.w_ih[1, 5], fd)
    for a, b in zip(eager, jitted, strict=True):
        assert_close(a, b)


# --------------------------------------------------------------------------- zeros_carry


@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3)])
def test_zeros_carry(batch_shape):
    carry = jl.zeros_carry(4, batch_shape, dtype=jnp.bfloat16)
    assert isinstance(carry, jl.LSTMCarry)
    for leaf in carry:
        assert leaf.shape == (*batch_shape, 4)
        assert leaf.dtype == jnp.bfloat16
        assert not np.any(np.asarray(leaf, np.float32))


# --------------------------------------------------------------------------- init_params


@pytest.mark.parametrize("scheme", ["keras", "torch"])
def test_init_params_shapes_dtype_and_determinism(key, scheme):
    params = jl.init_params(key, 3, 5, scheme=scheme)
    assert isinstance(params, jl.LSTMParams)
    assert params.w_ih.shape == (3, 20)
    assert params.w_hh.shape == (5, 20)
    assert params.b.shape == (20,)
    assert params.input_size == 3 and params.hidden_size == 5
    assert all(leaf.dtype == jnp.float32 for leaf in params)
    again = jl.init_params(key, 3, 5, scheme=scheme)
    other = jl.init_params(jax.random.fold_in(key, 1), 3, 5, scheme=scheme)
    for a, b in zip(params, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(params.w_ih, other.w_ih)
    assert not np.array_equal(params.w_hh, other.w_hh)


@pytest.mark.parametrize("scheme", ["keras", "torch"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_init_params_low_precision_dtype(key, scheme, dtype):
    params = jl.init_params(key, 3, 5, scheme=scheme, dtype=dtype)
    assert all(leaf.dtype == dtype for leaf in params)
    bound = math.sqrt(6.0 / (3 + 20)) if scheme == "keras" else 1.0 / math.sqrt(5)
    w_ih = np.asarray(params.w_ih, np.float32)
    assert np.all(np.abs(w_ih) <= 1.01 * bound) and np.abs(w_ih).max() > 0.5 * bound
    if scheme == "keras":
        assert_close(params.w_hh @ params.w_hh.T, np.eye(5))  # orthonormal up to the dtype's rounding


def test_init_params_keras_scheme(key):
    d, hid = 16, 8
    params = jl.init_params(key, d, hid, scheme="keras")
    expected_b = np.concatenate([np.zeros(hid), np.ones(hid), np.zeros(2 * hid)])
    np.testing.assert_array_equal(params.b, expected_b)

    # w_hh (H, 4H) is one orthogonal matrix: orthonormal rows (4H > H)
    assert_close(params.w_hh @ params.w_hh.T, np.eye(hid))

    # w_ih: glorot uniform, U(-limit, limit), limit = sqrt(6 / (fan_in + fan_out))
    limit = math.sqrt(6.0 / (d + 4 * hid))
    w_ih = np.asarray(params.w_ih, np.float64)
    assert np.all(np.abs(w_ih) <= limit)
    assert np.abs(w_ih).max() > 0.9 * limit
    # roughly uniform: mean ~ 0, std ~ limit / sqrt(3)  (512 draws)
    assert abs(w_ih.mean()) < 0.15 * limit
    assert w_ih.std() == pytest.approx(limit / math.sqrt(3), rel=0.1)


def test_init_params_keras_orthogonal_when_hidden_is_one(key):
    w_hh = jl.init_params(key, 2, 1, scheme="keras").w_hh
    assert_close(w_hh @ w_hh.T, [[1.0]])


def test_init_params_torch_scheme(key):
    d, hid = 12, 16
    params = jl.init_params(key, d, hid, scheme="torch")
    bound = 1.0 / math.sqrt(hid)
    for name, leaf in zip(jl.LSTMParams._fields, params, strict=True):
        values = np.asarray(leaf, np.float64).ravel()
        assert np.all(np.abs(values) <= bound), name
        assert np.abs(values).max() > 0.8 * bound, name
        assert values.min() < 0 < values.max(), name
    everything = np.concatenate([np.asarray(leaf, np.float64).ravel() for leaf in params])  # 1856 draws
    assert abs(everything.mean()) < 0.1 * bound
    assert everything.std() == pytest.approx(bound / math.sqrt(3), rel=0.08)
    # the three tensors are independent draws, not one reused key
    assert not np.allclose(params.w_ih[0], params.w_hh[0])
    assert not np.allclose(params.w_hh[0], params.b)
