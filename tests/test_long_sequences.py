"""``checkpoint_every``: chunked rematerialisation for long sequences changes no value and no gradient."""

import itertools

import jax
import jax.numpy as jnp
import pytest
from reference import assert_close

import jaxlstm as jl

B, T, D, H = 2, 10, 3, 4


@pytest.fixture(scope="module")
def data():
    keys = jax.random.split(jax.random.key(0), 6)
    with jax.enable_x64(True):
        params = jl.init_params(keys[0], D, H, scheme="torch", dtype=jnp.float64)
        xs = jax.random.normal(keys[1], (B, T, D), jnp.float64)
        cotangent = jax.random.normal(keys[2], (B, T, H), jnp.float64)
        flags = {
            "mask": jax.random.bernoulli(keys[3], 0.7, (B, T)),
            "resets": jax.random.bernoulli(keys[4], 0.2, (B, T)),
            "seq_lengths": jnp.array([10, 6]),
        }
    return params, xs, cotangent, flags


@pytest.mark.parametrize(
    "reverse, chunk, with_flags, gradient",
    list(itertools.product([False, True], [3, 5], [False, True], ["fused", "autodiff"])),
)
def test_chunked_values_and_gradients_equal_the_plain_path(data, reverse, chunk, with_flags, gradient):
    params, xs, cotangent, flags = data
    options = dict(reverse=reverse, gradient=gradient, **(flags if with_flags else {}))

    def loss(params, xs, checkpoint_every):
        final, hs = jl.lstm(params, xs, checkpoint_every=checkpoint_every, **options)
        return jnp.sum(hs * cotangent) + jnp.sum(final.h) + jnp.sum(final.c**2)

    with jax.enable_x64(True):
        plain = jax.value_and_grad(loss, argnums=(0, 1))(params, xs, None)
        chunked = jax.value_and_grad(loss, argnums=(0, 1))(params, xs, chunk)
    for expected, actual in zip(jax.tree.leaves(plain), jax.tree.leaves(chunked), strict=True):
        assert_close(actual, expected)


def test_checkpoint_every_keeps_only_chunk_boundaries_in_the_saved_residuals():
    params = jl.init_params(jax.random.key(0), D, H)
    xs = jnp.ones((B, 40, D))

    def loss(params, checkpoint_every):
        return jnp.sum(jl.lstm(params, xs, checkpoint_every=checkpoint_every)[0].h)

    def saved_bytes(checkpoint_every):
        residuals = jax.vjp(lambda p: loss(p, checkpoint_every), params)[1]
        return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(residuals))

    # plain: gate activations of all 40 steps; chunked: 40/8 carries plus what a chunk needs
    assert saved_bytes(8) < saved_bytes(None) / 2


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError)])
def test_bad_checkpoint_every(bad, error):
    params = jl.init_params(jax.random.key(0), D, H)
    with pytest.raises(error, match="checkpoint_every"):
        jl.lstm(params, jnp.ones((B, T, D)), checkpoint_every=bad)


def test_modules_take_checkpoint_every_without_changing_values_or_gradients():
    from flax import nnx

    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    plain, chunked = jl.LSTM(H, num_layers=2, bidirectional=True), None
    variables = plain.init(jax.random.key(0), xs)
    chunked = plain.clone(checkpoint_every=3)

    def loss(module, variables):
        return jnp.sum(module.apply(variables, xs) ** 2)

    assert_close(loss(chunked, variables), loss(plain, variables))
    for expected, actual in zip(
        jax.tree.leaves(jax.grad(lambda v: loss(plain, v))(variables)),
        jax.tree.leaves(jax.grad(lambda v: loss(chunked, v))(variables)),
        strict=True,
    ):
        assert_close(actual, expected)

    nnx_plain = jl.nnx.LSTM(D, H, rngs=nnx.Rngs(0))
    nnx_chunked = jl.nnx.LSTM(D, H, checkpoint_every=4, rngs=nnx.Rngs(0))
    assert_close(nnx_chunked(xs), nnx_plain(xs))
    with pytest.raises(ValueError, match="checkpoint_every"):
        jl.nnx.LSTM(D, H, checkpoint_every=0, rngs=nnx.Rngs(0))
    # every variant takes it too: tests/test_engine.py (values and gradients of each) and
    # tests/test_scan_variants.py (the modules)
