"""Mixed precision: ``dtype=jnp.bfloat16`` computes in bfloat16 with float32
parameters and a float32 cell state.

Documented tolerance (docs/variants.md, the modules' docstrings): over
T = 1,000 steps the bfloat16 outputs stay within BF16_ATOL of float32 ones.
"""

import jax
import jax.numpy as jnp
import pytest

import jaxlstm as jl

BF16_ATOL = 2e-2  # bfloat16 keeps 8 significant bits (eps 7.8e-3); the float32 cell state stops drift over time.
T = 1000


@pytest.fixture(scope="module")
def setup():
    x = jax.random.normal(jax.random.key(1), (2, T, 4))
    model = jl.LSTM(8, num_layers=2)
    variables = model.init(jax.random.key(0), x[:, :3])
    return x, variables


def test_bfloat16_module_keeps_float32_params_and_cell_state(setup):
    x, variables = setup
    carries, y = jl.LSTM(8, num_layers=2, dtype=jnp.bfloat16, return_carry=True).apply(variables, x)
    assert y.dtype == jnp.bfloat16
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    for layer in carries:
        assert layer[0].c.dtype == jnp.float32 and layer[0].h.dtype == jnp.bfloat16


def test_bfloat16_outputs_within_tolerance_of_float32_over_1000_steps(setup):
    x, variables = setup
    y32 = jl.LSTM(8, num_layers=2).apply(variables, x)
    ybf = jl.LSTM(8, num_layers=2, dtype=jnp.bfloat16).apply(variables, x)
    error = jnp.abs(ybf.astype(jnp.float32) - y32)
    assert float(jnp.max(error)) < BF16_ATOL
    # and it is really computing in bfloat16, not silently in float32:
    assert float(jnp.max(error)) > 1e-5


def test_bfloat16_gradients_are_finite_over_1000_steps(setup):
    x, variables = setup
    model = jl.LSTM(8, num_layers=2, dtype=jnp.bfloat16)

    def loss(v):
        return jnp.mean(model.apply(v, x).astype(jnp.float32) ** 2)

    grads = jax.jit(jax.grad(loss))(variables)
    leaves = jax.tree.leaves(grads)
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
    assert any(float(jnp.max(jnp.abs(leaf))) > 0 for leaf in leaves)


def test_core_with_bfloat16_inputs_defaults_to_a_float32_cell_state():
    params = jl.init_params(jax.random.key(0), 4, 8, dtype=jnp.bfloat16)
    final, hs = jl.lstm(params, jnp.ones((2, 5, 4), jnp.bfloat16))
    assert hs.dtype == jnp.bfloat16 and final.h.dtype == jnp.bfloat16 and final.c.dtype == jnp.float32


def test_a_bfloat16_carry_given_by_the_user_is_promoted_and_does_not_saturate():
    """c grows by ~1 per step (i, f, o and g saturated at 1): a bfloat16 c would stop at 256."""
    steps, hidden = 400, 2
    params = jl.init_params(jax.random.key(0), 1, hidden)
    params = params._replace(
        w_ih=jnp.zeros_like(params.w_ih), w_hh=jnp.zeros_like(params.w_hh), b=jnp.full((4 * hidden,), 20.0)
    )
    params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)  # a bfloat16 computation throughout
    xs = jnp.zeros((1, steps, 1), jnp.bfloat16)
    carry = jl.LSTMCarry(jnp.zeros((1, hidden), jnp.bfloat16), jnp.zeros((1, hidden), jnp.bfloat16))
    final, hs = jl.lstm(params, xs, carry)
    assert final.c.dtype == jnp.float32 and hs.dtype == jnp.bfloat16
    assert float(final.c[0, 0]) == pytest.approx(steps, rel=1e-3)  # float32 counts 400 steps; bfloat16 stops at 256
