"""jaxlstm/fused.py: the LSTM's fused path under every transformation, against its autodiff path.

(The engine's cells are checked the same way in tests/test_engine_rnn.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlstm as jl
from tests.reference import assert_close

D, H, B, T = 3, 4, 2, 5
VARIANTS = {"plain": None, "layer norm, projection, peepholes": jl.LSTMVariant(layer_norm=True, proj_size=2, peepholes=True)}


def _setup(variant, dtype):
    params = (
        jl.init_params(jax.random.key(0), D, H, dtype=dtype)
        if variant is None
        else jl.init_variant_params(jax.random.key(0), D, H, variant, dtype=dtype)
    )
    xs = jax.random.normal(jax.random.key(1), (B, T, D), dtype)
    return params, xs


@pytest.mark.parametrize("name", list(VARIANTS))
def test_forward_mode_hessian_and_vmap_equal_the_autodiff_path(name):
    variant = VARIANTS[name]
    with jax.enable_x64(True):
        params, xs = _setup(variant, jnp.float64)
        lengths = jnp.asarray([5, 3])

        def last(gradient):
            return lambda p, x: jl.lstm(p, x, variant=variant, seq_lengths=lengths, gradient=gradient)[0].h

        tangent = jax.tree.map(jnp.ones_like, params)
        checks = {
            "jvp": lambda f: jax.jvp(lambda p: f(p, xs), (params,), (tangent,)),
            "jacfwd": lambda f: jax.jacfwd(f, argnums=1)(params, xs),
            "linearize": lambda f: jax.linearize(lambda x: f(params, x), xs)[1](xs),
            "jit of hessian": lambda f: jax.jit(jax.hessian(lambda x: jnp.sum(f(params, x) ** 2)))(xs),
            "vmap of grad": lambda f: jax.vmap(jax.grad(lambda x: jnp.sum(f(params, x))))(jnp.stack([xs, -xs])),
        }
        for check_name, check in checks.items():
            fused, autodiff = check(last("fused")), check(last("autodiff"))
            for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(autodiff), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=f"{name}: {check_name}")


def test_jit_of_hessian_of_the_final_carry_with_seq_lengths():
    """XLA:CPU (jaxlib 0.10.2) failed to compile it ("Failed to translate module to LLVM IR") while the
    backward loop read steps with lax.dynamic_slice: jaxlstm.timeline.at's docstring."""
    with jax.enable_x64(True):
        params, xs = _setup(None, jnp.float64)
        lengths = jnp.asarray([5, 3])

        def hessian(gradient):
            def loss(x):
                return jnp.sum(jl.lstm(params, x, seq_lengths=lengths, gradient=gradient)[0].h ** 2)

            return jax.jit(jax.hessian(loss))(xs)

        np.testing.assert_allclose(hessian("fused"), hessian("autodiff"), rtol=1e-10, atol=1e-12)


def test_a_loss_on_the_final_carry_alone_has_exact_gradients():
    """hs's cotangent is a symbolic zero there, which the backward pass skips instead of reading."""
    with jax.enable_x64(True):
        params, xs = _setup(None, jnp.float64)
        lengths = jnp.asarray([5, 2])

        def loss(p, gradient):
            final = jl.lstm(p, xs, seq_lengths=lengths, masked_output="previous", gradient=gradient)[0]
            return jnp.sum(jnp.sin(final.h)) + jnp.sum(final.c**2)

        for a, b in zip(jax.grad(loss)(params, "fused"), jax.grad(loss)(params, "autodiff"), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_jl_lstm_exports_with_symbolic_batch_and_time_and_serializes():
    params, _ = _setup(None, jnp.float32)

    def grads(p, x):
        return jax.grad(lambda p: jnp.sum(jl.lstm(p, x)[1] ** 2))(p)

    batch, time = jax.export.symbolic_shape("b, t")
    exported = jax.export.export(jax.jit(grads))(params, jax.ShapeDtypeStruct((batch, time, D), jnp.float32))
    restored = jax.export.deserialize(exported.serialize())
    for shape in ((1, 3, D), (3, 7, D)):
        xs = jax.random.normal(jax.random.key(2), shape)
        for a, b in zip(restored.call(params, xs), grads(params, xs), strict=True):
            assert_close(a, b)
