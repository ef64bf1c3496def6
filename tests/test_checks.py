"""Bad input: every mistake gets jaxlstm's own message, never a raw JAX/XLA error.

Each case pins the exception type and message, and that it was raised by
jaxlstm's code (the innermost frame is in the jaxlstm package), so a check that
silently disappears and lets the error surface from deep inside JAX/XLA fails.
The module cases run for both linen (``jl.LSTM``) and NNX (``jl.nnx.LSTM``).
"""

import contextlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reference import assert_close, ref_lstm

import jaxlstm as jl

B, T, D, H = 3, 5, 3, 4
PACKAGE = pathlib.Path(jl.__file__).resolve().parent


@contextlib.contextmanager
def raises_clean(exc_type, match):
    with pytest.raises(exc_type, match=match) as info:
        yield info
    origin = pathlib.Path(str(info.traceback[-1].path)).resolve()
    assert PACKAGE in origin.parents, f"{type(info.value).__name__} raised in {origin}, not by jaxlstm"
    assert not isinstance(info.value, (jax.errors.JaxRuntimeError, jax.errors.JAXTypeError))


@pytest.fixture
def params():
    return jl.init_params(jax.random.key(0), D, H)


@pytest.fixture
def xs():
    return jnp.ones((B, T, D))


# --------------------------------------------------------------------------- jl.lstm / jl.lstm_cell

LSTM_CASES = {
    "rank": (
        dict(xs=jnp.ones((D,))),
        ValueError,
        r"xs must have shape \(\*batch, time, input\) with at least 2 dims, got 1 dims \(shape \(3,\)\)",
    ),
    "features": (
        dict(xs=jnp.ones((B, T, D + 1))),
        ValueError,
        r"xs has 4 features but params expect input_size=3 \(xs.shape=\(3, 5, 4\)\)",
    ),
    "int_xs": (dict(xs=jnp.ones((B, T, D), jnp.int32)), TypeError, r"xs must have a real floating dtype, got int32"),
    "list_xs": (dict(xs=[[[1.0] * D] * T] * B), TypeError, r"xs must be a JAX or NumPy array, got list"),
    "carry_size": (
        dict(carry=jl.zeros_carry(H + 1, (B,))),
        ValueError,
        r"carry.h must have shape \(\*batch, hidden_size\) = \(3, 4\), got \(3, 5\)",
    ),
    "carry_batch": (
        dict(carry=jl.zeros_carry(H, (B - 1,))),
        ValueError,
        r"carry.h must have shape \(\*batch, hidden_size\) = \(3, 4\), got \(2, 4\)",
    ),
    "carry_c_only": (
        dict(carry=jl.LSTMCarry(jnp.zeros((B, H)), jnp.zeros((B, H + 1)))),
        ValueError,
        r"carry.c must have shape \(\*batch, hidden_size\) = \(3, 4\), got \(3, 5\)",
    ),
    "carry_tuple": (
        dict(carry=(jnp.zeros((B, H)), jnp.zeros((B, H)))),
        TypeError,
        r"carry must be a jaxlstm.LSTMCarry\(h, c\), got a plain tuple; wrap it as jaxlstm.LSTMCarry\(h, c\)",
    ),
    "carry_array": (
        dict(carry=jnp.zeros((B, H))),
        TypeError,
        r"carry must be a jaxlstm.LSTMCarry\(h, c\), got ArrayImpl",
    ),
    "lengths_shape": (
        dict(seq_lengths=jnp.array([1, 2])),
        ValueError,
        r"seq_lengths must have shape \(\*batch,\) = \(3,\), one entry per sequence, got \(2,\)",
    ),
    "lengths_per_step": (
        dict(seq_lengths=jnp.ones((B, T), jnp.int32)),
        ValueError,
        r"seq_lengths must have shape \(\*batch,\) = \(3,\), one entry per sequence, got \(3, 5\)",
    ),
    "lengths_float": (
        dict(seq_lengths=jnp.array([1.0, 2.0, 3.0])),
        TypeError,
        r"seq_lengths must have an integer dtype, got float32",
    ),
    "lengths_list": (dict(seq_lengths=[1, 2, 3]), TypeError, r"seq_lengths must be a JAX or NumPy array, got list"),
    "unroll": (dict(unroll=0), ValueError, r"unroll must be an int >= 1, got 0"),
    # Issue 16's silent and raw cases: each now refused with the argument, expected and actual.
    "complex_carry": (
        dict(carry=jl.LSTMCarry(jnp.zeros((B, H), jnp.complex64), jnp.zeros((B, H), jnp.complex64))),
        TypeError,
        r"carry.h must have a real floating dtype, got complex64",
    ),
    "zero_features": (
        dict(xs=jnp.ones((B, T, 0))),
        ValueError,
        r"xs has 0 features \(xs.shape=\(3, 5, 0\)\); an LSTM reads at least one feature per step",
    ),
    "lengths_int64_past_int32": (
        dict(seq_lengths=np.array([2**32 + 3, 1, 2], np.int64)),
        ValueError,
        r"seq_lengths must be in \[0, time\] = \[0, 5\], got 4294967299 at index \(0,\) \(1 of 3 out of range\)",
    ),
    "lengths_uint32_max": (
        dict(seq_lengths=np.array([1, 4294967295, 2], np.uint32)),
        ValueError,
        r"seq_lengths must be in \[0, time\] = \[0, 5\], got 4294967295 at index \(1,\)",
    ),
    "lengths_negative": (
        dict(seq_lengths=jnp.array([1, 2, -1])),
        ValueError,
        r"seq_lengths must be in \[0, time\] = \[0, 5\], got -1 at index \(2,\)",
    ),
    "lengths_past_the_end": (
        dict(seq_lengths=jnp.array([T + 1, 2, 3])),
        ValueError,
        r"seq_lengths must be in \[0, time\] = \[0, 5\], got 6 at index \(0,\)",
    ),
    "reverse_string": (dict(reverse="no"), TypeError, r"reverse must be True or False, got str 'no'"),
}


@pytest.mark.parametrize("case", list(LSTM_CASES))
def test_lstm_bad_input(params, xs, case):
    overrides, exc_type, match = LSTM_CASES[case]
    kwargs = dict(xs=xs, carry=None)
    kwargs.update(overrides)
    with raises_clean(exc_type, match):
        jl.lstm(params, **kwargs)


@pytest.mark.parametrize("case", ["features", "carry_tuple", "lengths_float", "int_xs"])
def test_lstm_bad_input_under_jit(params, xs, case):
    """Checks run at trace time: the same message from inside jit."""
    overrides, exc_type, match = LSTM_CASES[case]
    kwargs = dict(xs=xs, carry=None)
    kwargs.update(overrides)
    with pytest.raises(exc_type, match=match):
        jax.jit(jl.lstm)(params, **kwargs)


def test_traced_seq_lengths_are_clamped_to_the_sequence(params, xs):
    """Inside jit the lengths can't be inspected: past the end counts every step, below 0 none."""
    run = jax.jit(lambda lengths: jl.lstm(params, xs, seq_lengths=lengths))
    clamped = run(jnp.array([T + 7, -2, 3]))
    expected = run(jnp.array([T, 0, 3]))  # the same compiled function, in range
    for got, want in zip(jax.tree.leaves(clamped), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(got, want)


def test_bad_params(xs):
    good = jl.init_params(jax.random.key(0), D, H)
    with raises_clean(TypeError, r"params must be a jaxlstm.LSTMParams \(w_ih, w_hh, b\), got tuple"):
        jl.lstm(tuple(good), xs)
    with raises_clean(ValueError, r"params.b must have shape \(16,\) for hidden_size=4, got \(12,\)"):
        jl.lstm(good._replace(b=jnp.zeros(12)), xs)
    with raises_clean(ValueError, r"params.w_hh must have shape \(hidden_size, 4 \* hidden_size\), got \(4, 12\)"):
        jl.lstm(good._replace(w_hh=jnp.zeros((4, 12))), xs)
    with raises_clean(ValueError, r"params.w_ih must have shape \(input_size, 16\) for hidden_size=4, got \(3, 12\)"):
        jl.lstm(good._replace(w_ih=jnp.zeros((3, 12))), xs)


def test_lstm_cell_bad_input(params):
    carry = jl.zeros_carry(H, (B,))
    with raises_clean(ValueError, r"x has 4 features but params expect input_size=3"):
        jl.lstm_cell(params, carry, jnp.ones((B, D + 1)))
    with raises_clean(ValueError, r"carry.h must have shape \(\*batch, hidden_size\) = \(3, 4\), got \(4,\)"):
        jl.lstm_cell(params, jl.zeros_carry(H), jnp.ones((B, D)))
    with raises_clean(TypeError, r"carry must be a jaxlstm.LSTMCarry\(h, c\), got a plain tuple"):
        jl.lstm_cell(params, tuple(carry), jnp.ones((B, D)))
    with raises_clean(TypeError, r"x must have a real floating dtype, got int32"):
        jl.lstm_cell(params, carry, jnp.ones((B, D), jnp.int32))


def test_mixed_dtypes_promote_instead_of_failing(params):
    """bfloat16 inputs (or carry) with float32 params compute in float32, even under strict promotion."""
    xs = np.random.default_rng(0).standard_normal((B, T, D)).astype(np.float32)
    xs_bf16 = jnp.asarray(xs, jnp.bfloat16)
    final, hs = jl.lstm(params, xs_bf16)
    assert hs.dtype == final.h.dtype == final.c.dtype == jnp.float32
    assert_close(hs, ref_lstm(*params, np.asarray(xs_bf16, np.float32))[2])

    final, hs = jl.lstm(params, jnp.asarray(xs), jl.zeros_carry(H, (B,), jnp.bfloat16))
    assert hs.dtype == final.h.dtype == jnp.float32
    assert_close(hs, ref_lstm(*params, xs)[2])


# --------------------------------------------------------------------------- init and stacks


def test_init_bad_sizes_and_scheme():
    key = jax.random.key(0)
    with raises_clean(
        ValueError, r"hidden_size must be an int >= 1, got 0; see docs/shapes.md#units-cells-and-time-steps"
    ):
        jl.init_params(key, D, 0)
    with raises_clean(ValueError, r"input_size must be an int >= 1, got -1"):
        jl.init_params(key, -1, H)
    with raises_clean(TypeError, r"hidden_size must be an int >= 1, got float 2.5"):
        jl.init_params(key, D, 2.5)
    with raises_clean(TypeError, r"hidden_size must be an int >= 1, got the bool True"):
        jl.init_params(key, D, True)
    with raises_clean(ValueError, r"hidden_size must be an int >= 1, got 0"):
        jl.zeros_carry(0, (B,))
    with raises_clean(ValueError, r"scheme must be one of 'keras', 'torch', 'flax', got 'xavier'"):
        jl.init_params(key, D, H, scheme="xavier")
    with raises_clean(ValueError, r"scheme must be one of 'keras', 'torch', 'flax', got 'glorot'"):
        jl.init_stack(key, D, H, scheme="glorot")
    with raises_clean(ValueError, r"num_layers must be an int >= 1, got 0"):
        jl.init_stack(key, D, H, num_layers=0)
    with raises_clean(ValueError, r"merge must be one of 'concat', 'sum', 'mul', 'ave', got 'max'"):
        jl.init_stack(key, D, H, bidirectional=True, merge="max")


@pytest.fixture
def bi_stack():
    return jl.init_stack(jax.random.key(0), D, H, num_layers=2, bidirectional=True)


def test_stack_bad_merge_dropout_and_direction(bi_stack, xs):
    with raises_clean(ValueError, r"merge must be one of 'concat', 'sum', 'mul', 'ave', got 'max'"):
        jl.stacked_lstm(bi_stack, xs, merge="max")
    with raises_clean(ValueError, r"merge must be one of 'concat', 'sum', 'mul', 'ave', got 'Concat'"):
        jl.merge_directions(jnp.ones((B, H)), jnp.ones((B, H)), "Concat")
    for rate in (-0.1, 1.0, 1.5):
        with raises_clean(ValueError, r"dropout must be in \[0, 1\), got " + str(rate)):
            jl.stacked_lstm(bi_stack, xs, dropout=rate, dropout_key=jax.random.key(0))
    with raises_clean(TypeError, r"dropout must be a float in \[0, 1\), got bool True"):
        jl.stacked_lstm(bi_stack, xs, dropout=True)
    with raises_clean(ValueError, r"reverse=True is for one-direction stacks"):
        jl.stacked_lstm(bi_stack, xs, reverse=True)


def test_stack_bad_structure(bi_stack, xs):
    carry = jl.zeros_carry(H, (B,))
    with raises_clean(
        ValueError, r"carries must be nested like the stack, \[layer\]\[direction\]: 2 layers of 2 LSTMCarry each"
    ):
        jl.stacked_lstm(bi_stack, xs, ((carry, carry),))
    with raises_clean(
        ValueError, r"carries must be nested like the stack, \[layer\]\[direction\]: 2 layers of 2 LSTMCarry each"
    ):
        jl.stacked_lstm(bi_stack, xs, (carry, carry))
    with raises_clean(
        ValueError, r"carries\[1\]\[1\]\.h must have shape \(\*batch, hidden_size\) = \(3, 4\), got \(3, 5\)"
    ):
        wrong = jl.zeros_carry(H + 1, (B,))
        jl.stacked_lstm(bi_stack, xs, ((carry, carry), (carry, wrong)))
    with raises_clean(TypeError, r"carries\[1\]\[1\] must be a jaxlstm.LSTMCarry\(h, c\), got a plain tuple"):
        jl.stacked_lstm(bi_stack, xs, ((carry, carry), (carry, tuple(carry))))
    with raises_clean(TypeError, r"stack must be a non-empty tuple of layers"):
        jl.stacked_lstm(bi_stack[0][0], xs)
    with raises_clean(TypeError, r"stack must be a non-empty tuple of layers"):
        jl.stacked_lstm((), xs)
    with raises_clean(TypeError, r"stack\[0\] must be a tuple of 1 \(forward\) or 2 \(forward, backward\) LSTMParams"):
        jl.stacked_lstm((bi_stack[0][0],), xs)
    with raises_clean(
        ValueError, r"every layer must have the same number of directions: stack\[0\] has 2, stack\[1\] has 1"
    ):
        jl.stacked_lstm((bi_stack[0], bi_stack[1][:1]), xs)
    with raises_clean(  # layer 1 fed the wrong width: named as the stack's entry, not as an xs never passed
        ValueError,
        r"stack\[1\]\[0\].w_ih has shape \(3, 16\), but layer 1 reads layer 0's outputs "
        r"\(2 x 4 merged by 'concat' = 8 features\): expected \(8, 16\)",
    ):
        jl.stacked_lstm((bi_stack[0], bi_stack[0]), xs)
    with raises_clean(TypeError, r"reverse must be True or False, got str 'yes'"):
        jl.stacked_lstm(bi_stack[:1], xs, reverse="yes")
    with raises_clean(ValueError, r"seq_lengths must be in \[0, time\] = \[0, 5\], got 9 at index \(1,\)"):
        jl.stacked_lstm(bi_stack, xs, seq_lengths=np.array([1, 9, 2]))


# --------------------------------------------------------------------------- linen and nnx modules


def _linen(x=None, call=None, **config):
    """init + apply of jl.LSTM(H, **config) on (B, T, D) ones; then apply on ``x`` with ``call`` kwargs."""
    module = jl.LSTM(H, **config)
    variables = module.init(jax.random.key(0), jnp.ones((B, T, D)))
    return module.apply(variables, jnp.ones((B, T, D)) if x is None else x, **(call or {}))


def _nnx(x=None, call=None, **config):
    model = jl.nnx.LSTM(D, H, **config, rngs=nnx.Rngs(0))
    return model(jnp.ones((B, T, D)) if x is None else x, **(call or {}))


MODULES = {"linen": _linen, "nnx": _nnx}

CONFIG_CASES = {
    "features": (dict(features=0), ValueError, r"features must be an int >= 1, got 0"),
    "num_layers": (dict(num_layers=0), ValueError, r"num_layers must be an int >= 1, got 0"),
    "merge": (
        dict(bidirectional=True, merge="max"),
        ValueError,
        r"merge must be one of 'concat', 'sum', 'mul', 'ave', got 'max'",
    ),
    "dropout_one": (dict(num_layers=2, dropout=1.0), ValueError, r"dropout must be in \[0, 1\), got 1.0"),
    "dropout_negative": (dict(num_layers=2, dropout=-0.5), ValueError, r"dropout must be in \[0, 1\), got -0.5"),
    "init_scheme": (
        dict(init_scheme="xavier"),
        ValueError,
        r"init_scheme must be one of 'keras', 'torch', 'flax', got 'xavier'",
    ),
    "reverse_bidirectional": (
        dict(bidirectional=True, reverse=True),
        ValueError,
        r"reverse=True is for a single direction",
    ),
}


@pytest.mark.parametrize("module", list(MODULES))
@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_module_bad_config(module, case):
    config, exc_type, match = CONFIG_CASES[case]
    config = dict(config)
    features = config.pop("features", H)
    with raises_clean(exc_type, match):
        if module == "linen":
            jl.LSTM(features, **config).init(jax.random.key(0), jnp.ones((B, T, D)))
        else:
            jl.nnx.LSTM(D, features, **config, rngs=nnx.Rngs(0))


def test_nnx_bad_in_features():
    with raises_clean(ValueError, r"in_features must be an int >= 1, got 0"):
        jl.nnx.LSTM(0, H, rngs=nnx.Rngs(0))
    with raises_clean(ValueError, r"in_features must be an int >= 1, got 0"):
        jl.nnx.LSTMCell(0, H, rngs=nnx.Rngs(0))


CALL_CASES = {
    "rank": (
        dict(x=jnp.ones((T,))),
        ValueError,
        r"x must have shape \(\*batch, time, input\) with at least 2 dims, got 1 dims",
    ),
    "complex_x": (
        dict(x=jnp.ones((B, T, D), jnp.complex64)),
        TypeError,
        r"x must have a real floating dtype, got complex64",
    ),
    "lengths_shape": (
        dict(call=dict(seq_lengths=jnp.array([1, 2]))),
        ValueError,
        r"seq_lengths must have shape \(\*batch,\) = \(3,\), one entry per sequence, got \(2,\)",
    ),
    "lengths_float": (
        dict(call=dict(seq_lengths=jnp.array([1.0, 2.0, 3.0]))),
        TypeError,
        r"seq_lengths must have an integer dtype, got float32",
    ),
    "carry_size": (
        dict(call=dict(initial_carry=((jl.zeros_carry(H + 1, (B,)),),))),
        ValueError,
        r"initial_carry\[0\]\[0\]\.h must have shape \(\*batch, hidden_size\) = \(3, 4\), got \(3, 5\)",
    ),
    "carry_plain_tuple": (
        dict(call=dict(initial_carry=((jnp.zeros((B, H)), jnp.zeros((B, H))),))),
        ValueError,
        r"initial_carry must be nested like the stack, \[layer\]\[direction\]: 1 layers of 1 LSTMCarry each",
    ),
    "carry_not_nested": (
        dict(call=dict(initial_carry=jl.zeros_carry(H, (B,)))),
        ValueError,
        r"initial_carry must be nested like the stack, \[layer\]\[direction\]: 1 layers of 1 LSTMCarry each",
    ),
}


@pytest.mark.parametrize("module", list(MODULES))
@pytest.mark.parametrize("case", list(CALL_CASES))
def test_module_bad_call(module, case):
    inputs, exc_type, match = CALL_CASES[case]
    with raises_clean(exc_type, match):
        MODULES[module](**inputs)


@pytest.mark.parametrize("module", list(MODULES))
def test_modules_cast_integer_and_bool_inputs_as_flax_does(module):
    """Flax's modules compute integer inputs in their float dtype; jaxlstm's do the same (the core refuses)."""
    ints = jnp.arange(B * T * D, dtype=jnp.int32).reshape(B, T, D) % 3
    np.testing.assert_array_equal(MODULES[module](ints), MODULES[module](ints.astype(jnp.float32)))
    np.testing.assert_array_equal(MODULES[module](ints > 0), MODULES[module]((ints > 0).astype(jnp.float32)))


def test_linen_refuses_variables_made_for_another_configuration():
    """Flax would drop unused parameters silently: a bidirectional model's backward cells, a variant's weights."""
    x = jnp.ones((B, T, D))
    bidirectional = jl.LSTM(H, bidirectional=True).init(jax.random.key(0), x)
    with raises_clean(ValueError, r"the variables hold parameters this LSTM does not use: layer_0_reverse \(this"):
        jl.LSTM(H).apply(bidirectional, x)
    peepholes = jl.LSTM(H, variant=jl.LSTMVariant(peepholes=True)).init(jax.random.key(0), x)
    with raises_clean(ValueError, r"does not use: layer_0/w_peep \(this model: num_layers=1, bidirectional=False"):
        jl.LSTM(H).apply(peepholes, x)


def test_module_bad_carry_leaf_in_bidirectional_layer():
    """In a 2-direction layer, a plain (h, c) pair where an LSTMCarry belongs gets the 'plain tuple' message."""
    pair = (jnp.zeros((B, H)), jnp.zeros((B, H)))
    good = jl.zeros_carry(H, (B,))
    for run in (_linen, _nnx):
        with raises_clean(TypeError, r"initial_carry\[0\]\[1\] must be a jaxlstm.LSTMCarry\(h, c\), got a plain tuple"):
            run(bidirectional=True, call=dict(initial_carry=((good, pair),)))


def test_module_wrong_feature_count():
    with raises_clean(
        ValueError,
        r"layer_0: the input has 4 features but the params expect input_size=3 \(params\['layer_0'\]\['w_ih'\]",
    ):
        _linen(x=jnp.ones((B, T, D + 1)))
    with raises_clean(ValueError, r"x has 4 features but params expect input_size=3"):
        _nnx(x=jnp.ones((B, T, D + 1)))
