"""jaxlstm.interop.flax: Flax's own LSTM cells (linen and nnx) <-> jaxlstm.LSTMParams."""

import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlstm as jl
from jaxlstm.interop import from_flax, to_flax

B, T, D, H = 3, 5, 4, 6
ATOL = 1e-5  # float32, max abs


def inputs(seed=1):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((B, T, D)).astype(np.float32))


def randomized(tree, seed=3):
    """Every leaf replaced by random values (Flax initialises the biases to zero; these must not be)."""
    leaves, treedef = jax.tree.flatten(tree)
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(
        treedef, [jnp.asarray(0.5 * rng.standard_normal(leaf.shape), jnp.float32) for leaf in leaves]
    )


def ours(params, x):
    return jax.jit(lambda p, x: jl.lstm(p, x)[1])(params, x)


def max_abs(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


def bits_equal(a, b):
    return all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x).view(np.uint32), np.asarray(y).view(np.uint32))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.mark.parametrize("cell_type", [nn.LSTMCell, nn.OptimizedLSTMCell])
def test_linen_cells_parity_and_round_trip(cell_type):
    x = inputs()
    rnn = nn.RNN(cell_type(features=H))
    variables = randomized(jax.eval_shape(rnn.init, jax.random.key(0), x))  # Flax's own tree, random values
    assert np.all(np.asarray(variables["params"]["cell"]["hi"]["bias"]) != 0)
    expected = jax.jit(rnn.apply)(variables, x)

    params = from_flax(variables, cell=cell_type.__name__)
    assert params.w_ih.shape == (D, 4 * H) and params.w_hh.shape == (H, 4 * H) and params.b.shape == (4 * H,)
    assert max_abs(ours(params, x), expected) <= ATOL

    # the same parameters, given as the cell's variables, its subtree, or with the cell instance to check
    cell_tree = variables["params"]["cell"]
    for given in ({"params": cell_tree}, cell_tree):
        assert bits_equal(from_flax(given, cell=cell_type(features=H)), params)

    tree = to_flax(params, cell=cell_type.__name__)
    assert jax.tree.structure(tree) == jax.tree.structure(jax.tree.map(np.asarray, dict(cell_tree)))
    assert bits_equal(tree, dict(cell_tree))
    assert bits_equal(from_flax(tree), params)


def test_final_carry_matches_flax():
    x = inputs()
    rnn = nn.RNN(nn.LSTMCell(features=H), return_carry=True)
    variables = randomized(jax.eval_shape(rnn.init, jax.random.key(0), x))
    (c, h), _ = jax.jit(rnn.apply)(variables, x)  # Flax's carry is (c, h)
    final, _ = jax.jit(jl.lstm)(from_flax(variables), x)
    assert max_abs(final.h, h) <= ATOL and max_abs(final.c, c) <= ATOL


@pytest.mark.parametrize("cell_type", [nnx.LSTMCell, nnx.OptimizedLSTMCell])
def test_nnx_cells_parity_and_round_trip(cell_type):
    zeros = nnx.initializers.zeros  # cheap to build; the values are replaced by random ones
    cell = cell_type(D, H, kernel_init=zeros, recurrent_kernel_init=zeros, rngs=nnx.Rngs(0))
    nnx.update(cell, randomized(nnx.state(cell, nnx.Param)))
    x = inputs()
    expected = nnx.jit(lambda cell, x: nnx.RNN(cell)(x))(cell, x)

    params = from_flax(cell)
    assert max_abs(ours(params, x), expected) <= ATOL
    assert bits_equal(from_flax(nnx.state(cell, nnx.Param), cell=cell), params)

    tree = to_flax(params, cell=cell)
    assert bits_equal(tree, nnx.to_pure_dict(nnx.state(cell, nnx.Param)))
    fresh = cell_type(D, H, kernel_init=zeros, recurrent_kernel_init=zeros, rngs=nnx.Rngs(1))
    nnx.update(fresh, tree)
    assert max_abs(nnx.jit(lambda cell, x: nnx.RNN(cell)(x))(fresh, x), expected) <= ATOL


def test_to_flax_then_from_flax_is_bitwise_for_jaxlstm_params():
    params = jl.init_params(jax.random.key(0), D, H, scheme="torch")
    params = params._replace(b=params.b.at[0].set(-0.0))
    assert bits_equal(from_flax(to_flax(params)), params)
    assert bits_equal(from_flax(to_flax(params, "OptimizedLSTMCell"), "OptimizedLSTMCell"), params)
    variables = {"params": {"cell": to_flax(params)}}
    assert max_abs(jax.jit(nn.RNN(nn.LSTMCell(H)).apply)(variables, inputs()), ours(params, inputs())) <= ATOL


def test_errors_name_the_problem():
    tree = to_flax(jl.init_params(jax.random.key(0), D, H, scheme="torch"))
    with pytest.raises(ValueError, match=r"cell must be one of 'LSTMCell', 'OptimizedLSTMCell'"):
        from_flax(tree, cell="GRUCell")
    with pytest.raises(ValueError, match=r"gate_fn=hard_sigmoid"):
        from_flax(tree, cell=nn.LSTMCell(H, gate_fn=jax.nn.hard_sigmoid))
    with pytest.raises(ValueError, match=r"activation_fn=relu"):
        from_flax(tree, cell=nn.LSTMCell(H, activation_fn=jax.nn.relu))
    with pytest.raises(ValueError, match=r"GRUCell"):
        from_flax(tree, cell=nn.GRUCell(H))
    missing = {k: v for k, v in tree.items() if k != "hg"}
    with pytest.raises(ValueError, match=r"params\['hg'\] is missing"):
        from_flax(missing)
    no_bias = {**tree, "ho": {"kernel": tree["ho"]["kernel"]}}
    with pytest.raises(ValueError, match=r"params\['ho'\]\['bias'\] is missing"):
        from_flax(no_bias)
    misshaped = {**tree, "if": {"kernel": jnp.zeros((D + 1, H))}}
    with pytest.raises(ValueError, match=r"params\['if'\]\['kernel'\] has shape \(5, 6\), expected \(4, 6\)"):
        from_flax(misshaped)
    with pytest.raises(ValueError, match="not the parameter tree of a Flax LSTM cell"):
        from_flax({"params": {"Dense_0": {"kernel": jnp.zeros((2, 2))}}})


def test_interop_imports_without_torch_and_keras():
    """torch and keras are optional: jaxlstm.interop imports without them and says how to get them."""
    script = """
import sys
sys.modules["torch"] = None    # makes `import torch` fail, as if it were not installed
sys.modules["keras"] = None
import jaxlstm.interop as interop
for name, call in [("torch", lambda: interop.from_torch(None)), ("keras", lambda: interop.to_keras(None, None))]:
    try:
        call()
    except ImportError as error:
        assert f"jaxlstm[{name}]" in str(error), error
    else:
        raise AssertionError(name)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
