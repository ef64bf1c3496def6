"""One engine for every cell: the fused gradient, the padding guard, ``checkpoint_every`` and the
dtype rule hold for every LSTM variant, not only the plain LSTM.

The fused gradient is checked against JAX's own differentiation of the same
loop (``gradient="autodiff"``) in float64, where the two must agree to ~1e-12;
the variants' values themselves are checked against the NumPy reference in
tests/test_variants.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlstm as jl
from jaxlstm import pointwise

B, T, D, H = 3, 5, 3, 4

# One of each member of the family, and one with every compatible option at once.
VARIANTS = {
    "peepholes": jl.LSTMVariant(peepholes=True),
    "layer_norm": jl.LSTMVariant(layer_norm=True),
    "cifg": jl.LSTMVariant(cifg=True),
    "cell_clip": jl.LSTMVariant(cell_clip=0.3),
    "proj_size": jl.LSTMVariant(proj_size=2),
    "forget_bias": jl.LSTMVariant(forget_bias=1.0),
    "zoneout": jl.LSTMVariant(zoneout_h=0.3, zoneout_c=0.2),
    "dropouts": jl.LSTMVariant(input_dropout=0.3, recurrent_dropout=0.4),
    "everything": jl.LSTMVariant(
        proj_size=3, peepholes=True, layer_norm=True, cell_clip=0.5, zoneout_h=0.2, zoneout_c=0.1, recurrent_dropout=0.2
    ),
}
TRAINING = {"zoneout", "dropouts", "everything"}  # those that draw masks; run with a dropout_key


def _params(name, variant, dtype=np.float64):
    """Weights with every extra array away from its neutral initial value (zero peepholes would test nothing)."""
    params = jl.init_variant_params(jax.random.key(7), D, H, variant, scheme="torch", dtype=dtype)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(8), len(leaves))
    noisy = [leaf + 0.3 * jax.random.normal(k, leaf.shape, leaf.dtype) for leaf, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(tree, noisy)


def _flags(rng, which):
    lengths = jnp.array([5, 3, 0])
    mask = jnp.asarray(rng.random((B, T)) < 0.7)
    resets = jnp.asarray(rng.random((B, T)) < 0.3)
    return {
        "lengths": dict(seq_lengths=lengths),
        "mask+resets": dict(mask=mask, resets=resets, masked_output="previous"),
        "all": dict(seq_lengths=lengths, mask=mask, resets=resets),
    }[which]


def _inputs(rng, variant, dtype=np.float64, nan_padding=False):
    xs = rng.normal(size=(B, T, D)).astype(dtype)
    if nan_padding:  # past seq_lengths = [5, 3, 0]
        xs[1, 3:] = np.nan
        xs[2, :] = np.nan
    r = variant.recurrent_size(H)
    carry = jl.LSTMCarry(
        jnp.asarray(rng.normal(size=(B, r)).astype(dtype)), jnp.asarray(rng.normal(size=(B, H)).astype(dtype))
    )
    return jnp.asarray(xs), carry


def _loss(variant, key, options):
    weights = jax.random.normal(jax.random.key(3), (B, T, variant.recurrent_size(H)), jnp.float64)

    def loss(params, xs, carry, gradient):
        final, hs = jl.lstm(params, xs, carry, variant=variant, dropout_key=key, gradient=gradient, **options)
        return jnp.sum(hs * weights.astype(hs.dtype)) + jnp.sum(final.h**2) + jnp.sum(jnp.sin(final.c))

    return loss


COMBINATIONS = [(flags, reverse) for flags in ("lengths", "mask+resets") for reverse in (False, True)]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_fused_gradient_equals_autodiff_in_float64(name, rng):
    """Each variant x (lengths with NaN in the padding | mask + resets + masked_output="previous")
    x (forward | reverse); the four compiled together (one jit per variant keeps the suite fast)."""
    variant = VARIANTS[name]
    key = jax.random.key(11) if name in TRAINING else None
    with jax.enable_x64(True):
        params = _params(name, variant)
        cases = []
        for flags, reverse in COMBINATIONS:
            xs, carry = _inputs(rng, variant, nan_padding=flags == "lengths")
            cases.append((_loss(variant, key, dict(_flags(rng, flags), reverse=reverse)), xs, carry))

        def both(params, inputs):
            grad = [jax.value_and_grad(loss, argnums=(0, 1, 2)) for loss, _, _ in cases]
            return [
                (g(params, xs, carry, "fused"), g(params, xs, carry, "autodiff"))
                for g, (xs, carry) in zip(grad, inputs, strict=True)
            ]

        results = jax.jit(both)(params, [(xs, carry) for _, xs, carry in cases])
    for (flags, reverse), ((value, grads), (value_ref, grads_ref)) in zip(COMBINATIONS, results, strict=True):
        where = f"{name}, {flags}, reverse={reverse}"
        np.testing.assert_allclose(value, value_ref, rtol=1e-12, err_msg=where)
        for (path, g), g_ref in zip(
            jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(grads_ref), strict=True
        ):
            g, g_ref, at = np.asarray(g), np.asarray(g_ref), f"{where}: {jax.tree_util.keystr(path)}"
            if flags == "lengths" and path[0].idx == 1:  # NaN inputs in padding: their gradient is zero
                assert np.all(g[1, 3:] == 0) and np.all(g[2] == 0), at
            assert np.all(np.isfinite(g)), f"non-finite gradient: {at}"
            np.testing.assert_allclose(g, g_ref, rtol=1e-10, atol=1e-12, err_msg=at)


def test_the_fused_path_runs_the_variant_cells_own_backward_pass():
    """The fused gradient differentiates the cell's elementwise step; the variant loop is gone."""
    variant = VARIANTS["everything"]
    cell = pointwise.pointwise_for(variant, jax.nn.sigmoid, jnp.tanh, training=True)
    assert isinstance(cell, pointwise.VariantPointwise) and cell.fusable and cell.separate
    # A projection, zoneout of h and the dropouts act outside the step: the plain step (and its
    # hand-written derivative) serves them.
    for name in ("proj_size", "forget_bias", "dropouts"):
        cell = pointwise.pointwise_for(VARIANTS[name], jax.nn.sigmoid, jnp.tanh, training=True)
        assert isinstance(cell, pointwise.PlainPointwise), name
    params = _params("peepholes", VARIANTS["peepholes"], np.float32)
    for gradient, fused in (("fused", True), ("autodiff", False)):
        jaxpr = jax.make_jaxpr(lambda p, x, g=gradient: jl.lstm(p, x, variant=VARIANTS["peepholes"], gradient=g))
        # the fused loop is a custom_jvp (jaxlstm.fused): reverse mode transposes it into the fused backward
        assert ("custom_jvp_call" in str(jaxpr(params, jnp.ones((B, T, D))))) == fused


@pytest.mark.parametrize("name", list(VARIANTS))
def test_checkpoint_every_changes_no_value_and_no_gradient(name, rng):
    """In float64, so that the only difference allowed is the order of float additions."""
    variant = VARIANTS[name]
    key = jax.random.key(11) if name in TRAINING else None
    with jax.enable_x64(True):
        params = _params(name, variant)
        xs, carry = _inputs(rng, variant)
        options = _flags(rng, "all")

        def loss(params, xs, carry, every):
            final, hs = jl.lstm(params, xs, carry, variant=variant, dropout_key=key, checkpoint_every=every, **options)
            return jnp.sum(hs * hs) + jnp.sum(final.c)

        grad = jax.value_and_grad(loss, argnums=(0, 1, 2))
        both = jax.jit(lambda *args: (grad(*args, 2), grad(*args, None)))  # one compile for the two
        (value, grads), (value_ref, grads_ref) = both(params, xs, carry)
    np.testing.assert_allclose(value, value_ref, rtol=1e-12)
    for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["peepholes", "proj_size", "layer_norm"])
def test_a_bfloat16_carry_with_float32_inputs_gives_a_float32_state(name, rng):
    """The dtype rule of the plain path: the computation is float32, so c is too."""
    variant = VARIANTS[name]
    params = _params(name, variant, np.float32)
    xs, carry = _inputs(rng, variant, np.float32)
    carry = jl.LSTMCarry(carry.h.astype(jnp.bfloat16), carry.c.astype(jnp.bfloat16))
    final, hs = jl.lstm(params, xs, carry, variant=variant)
    plain_final, _ = jl.lstm(
        jl.init_params(jax.random.key(0), D, H),
        xs,
        jl.LSTMCarry(*(a.astype(jnp.bfloat16) for a in jl.zeros_carry(H, (B,)))),
    )
    assert final.c.dtype == plain_final.c.dtype == jnp.float32
    assert hs.dtype == final.h.dtype == jnp.float32


def test_lstm_variant_is_lstm_with_a_variant(rng):
    variant = VARIANTS["everything"]
    params = _params("everything", variant, np.float32)
    xs, carry = _inputs(rng, variant, np.float32)
    a = jl.lstm_variant(params, xs, carry, variant=variant, dropout_key=jax.random.key(2))
    b = jl.lstm(params, xs, carry, variant=variant, dropout_key=jax.random.key(2))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_stacked_variants_take_checkpoint_every(rng):
    variant = VARIANTS["peepholes"]
    stack = jl.init_stack(jax.random.key(0), D, H, num_layers=2, bidirectional=True, variant=variant)
    xs, _ = _inputs(rng, variant, np.float32)

    def loss(stack, every):
        _, hs = jl.stacked_lstm(stack, xs, variant=variant, seq_lengths=jnp.array([5, 3, 1]), checkpoint_every=every)
        return jnp.sum(hs**2)

    grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    (value, grads), (value_ref, grads_ref) = grad(stack, 2), grad(stack, None)
    np.testing.assert_allclose(value, value_ref, rtol=1e-6)
    for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6)
