"""The cells' elementwise math (jaxlstm/pointwise.py): layer norm, its saved-statistics gradient
and its range.

Layer norm is checked against a float64 NumPy normalization written here, and
its hand-written derivative against JAX's differentiation of that same
formula in float64. The range test is the numeric edge of issue 17: inputs up
to the float32 limit must give finite outputs on the layer-norm variant, as
they do on the plain LSTM.
"""

import jax
import jax.numpy as jnp
import numpy as np

import jaxlstm as jl
from jaxlstm.pointwise import normalize, normalize_backward

EPSILON = 1e-5


def _numpy_layer_norm(a, epsilon=EPSILON):
    a = np.asarray(a, np.float64)
    centered = a - a.mean(axis=-1, keepdims=True)
    return centered / np.sqrt((centered**2).mean(axis=-1, keepdims=True) + epsilon)


def test_normalize_equals_numpy_from_tiny_to_the_float32_limit(rng):
    rows = np.concatenate(
        [
            rng.normal(size=(3, 8)),  # ordinary values: the path that is never rescaled
            rng.normal(size=(2, 8)) * 1e-20,  # tiny: ε dominates
            rng.uniform(-3.4e38, 3.4e38, size=(3, 8)),  # where squares and sums overflow float32
            np.full((1, 8), 2.5),  # a constant row: all zeros
        ]
    ).astype(np.float32)
    normalized, inv_sigma = normalize(jnp.asarray(rows), EPSILON)
    np.testing.assert_allclose(normalized, _numpy_layer_norm(rows), rtol=2e-5, atol=2e-6)
    centered = rows.astype(np.float64) - rows.astype(np.float64).mean(axis=-1, keepdims=True)
    expected_inv = 1.0 / np.sqrt((centered**2).mean(axis=-1, keepdims=True) + EPSILON)
    np.testing.assert_allclose(inv_sigma, expected_inv, rtol=2e-5, atol=1e-37)  # below 1e-37: flushed to zero
    assert np.isfinite(np.asarray(normalized)).all()
    ordinary = jnp.asarray(rows[:5])  # the path for bounded rows (h·W_hh, c): the same values, no rescaling
    np.testing.assert_allclose(
        normalize(ordinary, EPSILON, any_magnitude=False)[0], _numpy_layer_norm(rows[:5]), rtol=2e-5, atol=2e-6
    )


def test_normalize_gradient_from_saved_statistics_equals_autodiff_in_float64(rng):
    with jax.enable_x64(True):
        a = jnp.asarray(rng.normal(size=(3, 6)) * 3.0)
        cotangent = jnp.asarray(rng.normal(size=(3, 6)))

        def textbook(a):  # the formula itself, differentiated by JAX
            centered = a - jnp.mean(a, axis=-1, keepdims=True)
            return centered / jnp.sqrt(jnp.mean(centered * centered, axis=-1, keepdims=True) + EPSILON)

        expected = jax.vjp(textbook, a)[1](cotangent)[0]
        normalized, inv_sigma = normalize(a, EPSILON)
        np.testing.assert_allclose(normalized, textbook(a), rtol=1e-12)
        np.testing.assert_allclose(normalize_backward(cotangent, normalized, inv_sigma), expected, rtol=1e-10)


def test_layer_norm_variant_is_finite_up_to_the_float32_limit():
    variant = jl.LSTMVariant(layer_norm=True)
    params = jl.init_variant_params(jax.random.key(0), 3, 4, variant)
    xs = jnp.array([[[1e38, -3e38, 3.4e38], [2.0, -1.0, 0.5]], [[-3.4e38, 1e38, 1e37], [1e-3, 1e-3, 1e-3]]])

    def loss(params, xs, variant):
        return jnp.sum(jl.lstm(params, xs, variant=variant)[1])

    values, grads = jax.jit(jax.value_and_grad(loss), static_argnums=2)(params, xs, variant)
    assert np.isfinite(float(values))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    plain = jl.init_params(jax.random.key(0), 3, 4)
    assert np.isfinite(np.asarray(jl.lstm(plain, xs)[1])).all()  # what the plain LSTM gives on the same inputs
