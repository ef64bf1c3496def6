"""The LSTM variants through jaxlstm.scan's one loop: padding, mixed-precision carries, checkpointing in
the modules; each a bug once found on the variants' old second loop (issue 14), kept as its report wrote it.

Each failed on 6a551bf; tests/test_engine.py checks the same rules more widely (every variant,
flag and direction, fused against autodiff).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlstm as jl

PADDED = {
    "peepholes": jl.LSTMVariant(peepholes=True),
    "layer_norm": jl.LSTMVariant(layer_norm=True),
    "cell_clip": jl.LSTMVariant(cell_clip=0.5),
    "proj_size": jl.LSTMVariant(proj_size=2),
    "cifg": jl.LSTMVariant(cifg=True),
    "zoneout": jl.LSTMVariant(zoneout_h=0.2, zoneout_c=0.1),
}


@pytest.mark.parametrize("name", list(PADDED))
def test_nan_in_padding_gives_finite_gradients(name):
    xs = jnp.ones((2, 5, 3)).at[1, 3:].set(jnp.nan)
    lens = jnp.array([5, 3])
    v = PADDED[name]
    p = jl.init_variant_params(jax.random.key(0), 3, 4, v)
    grads = jax.grad(lambda p: jl.lstm_variant(p, xs, variant=v, seq_lengths=lens)[1].sum())(p)
    for leaf in jax.tree.leaves(grads):
        assert np.all(np.isfinite(leaf)), name


def test_a_bfloat16_carry_with_float32_inputs_keeps_a_float32_cell_state():
    v = jl.LSTMVariant(peepholes=True)
    p = jl.init_variant_params(jax.random.key(0), 3, 4, v)
    carry = jl.LSTMCarry(jnp.zeros((2, 4), jnp.bfloat16), jnp.zeros((2, 4), jnp.bfloat16))
    final, _ = jl.lstm_variant(p, jnp.ones((2, 5, 3)), carry, variant=v)
    plain, _ = jl.lstm(jl.init_params(jax.random.key(0), 3, 4), jnp.ones((2, 5, 3)), carry)
    assert final.c.dtype == plain.c.dtype == jnp.float32


def test_modules_take_checkpoint_every_with_a_variant():
    layer = jl.LSTM(4, variant=jl.LSTMVariant(peepholes=True), checkpoint_every=2)
    x = jnp.ones((2, 5, 3))
    variables = layer.init(jax.random.key(0), x)
    plain = jl.LSTM(4, variant=jl.LSTMVariant(peepholes=True))
    np.testing.assert_allclose(layer.apply(variables, x), plain.apply(variables, x), rtol=1e-6, atol=1e-6)
