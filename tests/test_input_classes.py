"""Each class of input is checked by one helper of ``jaxlstm._checks``, the same way at every entry point.

Booleans (``flag``), parameter and computation dtypes (``float_dtype``), PRNG keys
(``prng_key``), finite numbers (``real``, ``rate``), elementwise functions
(``activation``), shapes given as an int (``batch_shape``) and two arrays that must
match (``same_shape``). A value that one entry point accepts means the same at every
other (``np.True_`` is ``True`` for the functional core, linen and NNX alike); a value
one refuses, every one refuses, with a message naming the argument. The functional
cases are traced with ``jax.eval_shape``: the checks run at trace time, nothing compiles.
"""

import contextlib
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlstm as jl

B, T, D, H = 2, 3, 3, 4
PACKAGE = pathlib.Path(jl.__file__).resolve().parent
KEY = jax.random.key(0)
XS = jnp.linspace(-1.0, 1.0, B * T * D, dtype=jnp.float32).reshape(B, T, D)
PARAMS = jl.init_params(KEY, D, H)
DROPPING = jl.LSTMVariant(input_dropout=0.5)
DROPPING_PARAMS = jl.init_variant_params(KEY, D, H, DROPPING)
STACK = jl.init_stack(KEY, D, H, num_layers=2)


@contextlib.contextmanager
def raises_clean(exc_type, match):
    """The error is jaxlstm's own: raised in the package, not deep in JAX, Flax or NumPy."""
    with pytest.raises(exc_type, match=match) as info:
        yield info
    origin = pathlib.Path(str(info.traceback[-1].path)).resolve()
    assert PACKAGE in origin.parents, f"{type(info.value).__name__} raised in {origin}, not by jaxlstm"


def traced(call):
    return lambda value: jax.eval_shape(lambda: call(value))


# --------------------------------------------------------------------------- booleans

# Every boolean option and call argument, each as a function of the value given to it.
BOOL_SITES = {
    "lstm(reverse=)": ("reverse", traced(lambda v: jl.lstm(PARAMS, XS, reverse=v))),
    "lstm(deterministic=)": (
        "deterministic",
        traced(lambda v: jl.lstm(DROPPING_PARAMS, XS, variant=DROPPING, dropout_key=KEY, deterministic=v)),
    ),
    "lstm(deterministic=) plain": ("deterministic", traced(lambda v: jl.lstm(PARAMS, XS, deterministic=v))),
    "stacked_lstm(reverse=)": ("reverse", traced(lambda v: jl.stacked_lstm(STACK, XS, reverse=v))),
    "stacked_lstm(deterministic=)": (
        "deterministic",
        traced(lambda v: jl.stacked_lstm(STACK, XS, dropout=0.5, dropout_key=KEY, deterministic=v)),
    ),
    "init_stack(bidirectional=)": ("bidirectional", lambda v: jl.init_stack(KEY, D, H, bidirectional=v)),
    "LSTMVariant(peepholes=)": ("peepholes", lambda v: jl.LSTMVariant(peepholes=v)),
    "LSTMVariant(layer_norm=)": ("layer_norm", lambda v: jl.LSTMVariant(layer_norm=v)),
    "LSTMVariant(cifg=)": ("cifg", lambda v: jl.LSTMVariant(cifg=v)),
    "explain(bidirectional=)": ("bidirectional", lambda v: jl.explain(B, T, D, H, bidirectional=v)),
    "explain(return_sequences=)": ("return_sequences", lambda v: jl.explain(B, T, D, H, return_sequences=v)),
    "linen LSTMCell(learn_initial_carry=)": ("learn_initial_carry", lambda v: jl.LSTMCell(H, learn_initial_carry=v)),
    "nnx LSTMCell(learn_initial_carry=)": (
        "learn_initial_carry",
        lambda v: jl.nnx.LSTMCell(D, H, learn_initial_carry=v, rngs=nnx.Rngs(0)),
    ),
    "nnx LSTM(deterministic=)": ("deterministic", lambda v: jl.nnx.LSTM(D, H, deterministic=v, rngs=nnx.Rngs(0))),
    "linen LSTM call deterministic=": (
        "deterministic",
        lambda v: jl.LSTM(H).apply(jl.LSTM(H).init(KEY, XS), XS, deterministic=v),
    ),
    "nnx LSTM call deterministic=": (
        "deterministic",
        lambda v: jl.nnx.LSTM(D, H, rngs=nnx.Rngs(0))(XS, deterministic=v),
    ),
}
for _option in ("bidirectional", "return_sequences", "return_carry", "reverse", "learn_initial_carry", "stateful"):
    BOOL_SITES[f"linen LSTM({_option}=)"] = (_option, lambda v, o=_option: jl.LSTM(H, **{o: v}))
    BOOL_SITES[f"nnx LSTM({_option}=)"] = (_option, lambda v, o=_option: jl.nnx.LSTM(D, H, rngs=nnx.Rngs(0), **{o: v}))

NOT_BOOLS = {"str": "no", "str_false": "False", "int": 1, "float": 0.0, "array": jnp.array([True])}


@pytest.mark.parametrize("bad", list(NOT_BOOLS))
@pytest.mark.parametrize("site", list(BOOL_SITES))
def test_a_boolean_is_true_or_false_and_nothing_else(site, bad):
    name, call = BOOL_SITES[site]
    value = NOT_BOOLS[bad]
    with raises_clean(TypeError, rf"^{name} must be (None, )?True or False, got "):
        call(value)


def test_numpy_and_jax_bools_mean_what_python_bools_mean():
    for true in (np.True_, jnp.array(True), np.array(True)):
        np.testing.assert_array_equal(jl.lstm(PARAMS, XS, reverse=true)[1], jl.lstm(PARAMS, XS, reverse=True)[1])
        assert len(jl.init_stack(KEY, D, H, bidirectional=true)[0]) == 2
        assert jl.LSTMVariant(peepholes=true, layer_norm=true) == jl.LSTMVariant(peepholes=True, layer_norm=True)
        assert str(jl.explain(B, T, D, H, bidirectional=true)) == str(jl.explain(B, T, D, H, bidirectional=True))
        assert jl.LSTM(H, return_carry=true).config == jl.LSTM(H, return_carry=True).config
        assert jl.nnx.LSTM(D, H, stateful=true, rngs=nnx.Rngs(0)).stateful is True
    assert jl.LSTM(H, return_sequences=np.False_).config.return_sequences is False


def test_numpy_true_means_true_in_the_functional_core_linen_and_nnx():
    """``deterministic=np.True_`` with a dropout key: no dropout, in every API (it applied dropout in
    ``jl.stacked_lstm``, whose rule read ``deterministic is not True``)."""
    stacked = jax.jit(jl.stacked_lstm, static_argnames=("dropout", "deterministic"))
    without_key = stacked(STACK, XS)[1]
    np.testing.assert_array_equal(
        stacked(STACK, XS, dropout=0.5, dropout_key=KEY, deterministic=np.True_)[1], without_key
    )
    trained = stacked(STACK, XS, dropout=0.5, dropout_key=KEY, deterministic=False)[1]
    np.testing.assert_array_equal(stacked(STACK, XS, dropout=0.5, dropout_key=KEY, deterministic=np.False_)[1], trained)
    assert not np.array_equal(trained, without_key)  # the key did draw masks
    np.testing.assert_array_equal(
        jl.lstm(DROPPING_PARAMS, XS, variant=DROPPING, dropout_key=KEY, deterministic=np.True_)[1],
        jl.lstm(DROPPING_PARAMS, XS, variant=DROPPING)[1],
    )
    layer = jl.LSTM(H, num_layers=2, dropout=0.5)
    variables = layer.init(KEY, XS)
    np.testing.assert_array_equal(
        layer.apply(variables, XS, deterministic=np.True_, rngs={"dropout": KEY}), layer.apply(variables, XS)
    )
    model = jl.nnx.LSTM(D, H, num_layers=2, dropout=0.5, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(model(XS, deterministic=np.True_), model(XS, deterministic=True))


def test_a_traced_bool_is_refused_with_the_fix():
    with raises_clean(TypeError, r"deterministic must be None, True or False known when the function is traced"):
        jax.jit(lambda d: jl.lstm(PARAMS, XS, deterministic=d))(True)


def test_stateful_message_names_the_option_that_is_set():
    with raises_clean(ValueError, r"can't be combined with reverse=True, which needs the whole sequence$"):
        jl.LSTM(H, stateful=True, reverse=True)
    with raises_clean(ValueError, r"can't be combined with bidirectional=True, which needs the whole sequence$"):
        jl.nnx.LSTM(D, H, stateful=True, bidirectional=True, rngs=nnx.Rngs(0))


# --------------------------------------------------------------------------- dtypes

DTYPE_SITES = {
    "init_params(dtype=)": ("dtype", lambda v: jl.init_params(KEY, D, H, dtype=v)),
    "init_variant_params(dtype=)": ("dtype", lambda v: jl.init_variant_params(KEY, D, H, DROPPING, dtype=v)),
    "init_stack(dtype=)": ("dtype", lambda v: jl.init_stack(KEY, D, H, dtype=v)),
    "zeros_carry(dtype=)": ("dtype", lambda v: jl.zeros_carry(H, (B,), dtype=v)),
    "linen LSTM(dtype=)": ("dtype", lambda v: jl.LSTM(H, dtype=v)),
    "linen LSTM(param_dtype=)": ("param_dtype", lambda v: jl.LSTM(H, param_dtype=v)),
    "linen LSTMCell(dtype=)": ("dtype", lambda v: jl.LSTMCell(H, dtype=v)),
    "linen LSTMCell(param_dtype=)": ("param_dtype", lambda v: jl.LSTMCell(H, param_dtype=v)),
    "nnx LSTM(dtype=)": ("dtype", lambda v: jl.nnx.LSTM(D, H, dtype=v, rngs=nnx.Rngs(0))),
    "nnx LSTM(param_dtype=)": ("param_dtype", lambda v: jl.nnx.LSTM(D, H, param_dtype=v, rngs=nnx.Rngs(0))),
    "nnx LSTMCell(dtype=)": ("dtype", lambda v: jl.nnx.LSTMCell(D, H, dtype=v, rngs=nnx.Rngs(0))),
    "nnx LSTMCell(param_dtype=)": ("param_dtype", lambda v: jl.nnx.LSTMCell(D, H, param_dtype=v, rngs=nnx.Rngs(0))),
}
NOT_FLOAT_DTYPES = {
    "int32": (jnp.int32, r"got int32$"),
    "uint8": ("uint8", r"got uint8$"),
    "bool": (jnp.bool_, r"got bool$"),
    "complex": (jnp.complex64, r"got complex64$"),
    "unknown_name": ("float17", r"got str 'float17', which is not a dtype$"),
    "not_a_dtype": (3, r"got int 3, which is not a dtype$"),
}


@pytest.mark.parametrize("bad", list(NOT_FLOAT_DTYPES))
@pytest.mark.parametrize("site", list(DTYPE_SITES))
def test_a_dtype_is_real_floating(site, bad):
    """Integer parameters were all zeros (init_params(dtype=jnp.int32)); a wrong name was NumPy's error."""
    name, call = DTYPE_SITES[site]
    value, got = NOT_FLOAT_DTYPES[bad]
    with raises_clean(TypeError, rf"^{name} must be (None or )?a real floating dtype such as jnp.float32.*{got}"):
        call(value)


def test_a_dtype_may_be_named_by_a_string():
    params = jl.init_params(KEY, D, H, dtype="bfloat16")
    assert {leaf.dtype for leaf in params} == {jnp.dtype(jnp.bfloat16)}
    np.testing.assert_array_equal(params.w_ih, PARAMS.w_ih.astype(jnp.bfloat16))


def test_an_integer_computation_dtype_is_blamed_on_dtype_not_on_xs():
    """``jl.LSTM(4, dtype=jnp.int32)`` said "xs must have a real floating dtype" though xs was float32."""
    with raises_clean(TypeError, r"^dtype must be None or a real floating dtype"):
        jl.LSTM(H, dtype=jnp.int32)


# --------------------------------------------------------------------------- PRNG keys

KEY_SITES = {
    "init_params(key)": ("key", lambda v: jl.init_params(v, D, H)),
    "init_variant_params(key)": ("key", lambda v: jl.init_variant_params(v, D, H, DROPPING)),
    "init_stack(key)": ("key", lambda v: jl.init_stack(v, D, H)),
    "lstm(dropout_key=)": ("dropout_key", traced(lambda v: jl.lstm(DROPPING_PARAMS, XS, variant=DROPPING, dropout_key=v))),
    "lstm(dropout_key=) plain": ("dropout_key", traced(lambda v: jl.lstm(PARAMS, XS, dropout_key=v))),
    "stacked_lstm(dropout_key=)": ("dropout_key", traced(lambda v: jl.stacked_lstm(STACK, XS, dropout=0.5, dropout_key=v))),
    "nnx LSTM call rngs=": ("rngs", lambda v: jl.nnx.LSTM(D, H, num_layers=2, dropout=0.5, rngs=nnx.Rngs(0))(XS, rngs=v)),
}
NOT_KEYS = {
    "seed": (42, TypeError, r"got int 42 \(for a seed, pass jax.random.key\(42\)\)"),
    "floats": (jnp.ones(2), TypeError, r"got ArrayImpl of dtype float32 and shape \(2,\)"),
    "wrong_raw_shape": (jnp.zeros(3, jnp.uint32), TypeError, r"got ArrayImpl of dtype uint32 and shape \(3,\)"),
    "batch_of_keys": (jax.random.split(KEY, 2), ValueError, r"one PRNG key \(shape \(\)\), got a batch of keys"),
}


@pytest.mark.parametrize("bad", list(NOT_KEYS))
@pytest.mark.parametrize("site", list(KEY_SITES))
def test_a_key_is_one_prng_key(site, bad):
    name, call = KEY_SITES[site]
    value, exc_type, got = NOT_KEYS[bad]
    with raises_clean(exc_type, rf"^{name} must be .*{got}"):
        call(value)


def test_a_legacy_raw_key_draws_what_the_typed_key_draws():
    legacy = jl.init_params(jax.random.PRNGKey(0), D, H)
    for mine, theirs in zip(legacy, PARAMS, strict=True):
        np.testing.assert_array_equal(mine, theirs)
    raw = jl.stacked_lstm(STACK, XS, dropout=0.5, dropout_key=jax.random.PRNGKey(0))[1]
    np.testing.assert_array_equal(raw, jl.stacked_lstm(STACK, XS, dropout=0.5, dropout_key=KEY)[1])


def test_nnx_rngs_must_be_rngs():
    with raises_clean(TypeError, r"^rngs must be an nnx.Rngs, e.g. nnx.Rngs\(0\), got int; for a seed, pass nnx.Rngs\(0\)"):
        jl.nnx.LSTM(D, H, rngs=0)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- finite numbers

NUMBER_SITES = {
    "forget_bias": lambda v: jl.LSTMVariant(forget_bias=v),
    "cell_clip": lambda v: jl.LSTMVariant(cell_clip=v),
    "layer_norm_epsilon": lambda v: jl.LSTMVariant(layer_norm_epsilon=v),
}
RATE_SITES = {
    "LSTMVariant(input_dropout=)": ("input_dropout", lambda v: jl.LSTMVariant(input_dropout=v)),
    "LSTMVariant(zoneout_c=)": ("zoneout_c", lambda v: jl.LSTMVariant(zoneout_c=v)),
    "stacked_lstm(dropout=)": ("dropout", traced(lambda v: jl.stacked_lstm(STACK, XS, dropout=v))),
    "linen LSTM(dropout=)": ("dropout", lambda v: jl.LSTM(H, num_layers=2, dropout=v)),
    "nnx LSTM(dropout=)": ("dropout", lambda v: jl.nnx.LSTM(D, H, num_layers=2, dropout=v, rngs=nnx.Rngs(0))),
}


@pytest.mark.parametrize("name", list(NUMBER_SITES))
def test_a_number_is_finite_and_not_a_bool(name):
    call = NUMBER_SITES[name]
    for value in (float("nan"), float("inf"), -np.inf):
        with raises_clean(ValueError, rf"^{name} must be finite, got "):
            call(value)
    for value in (True, "1.0", jnp.ones(2)) + (() if name == "cell_clip" else (None,)):  # cell_clip=None: no clip
        with raises_clean(TypeError, rf"^{name} must be a number, got "):
            call(value)


@pytest.mark.parametrize("site", list(RATE_SITES))
def test_a_rate_is_a_number_in_zero_one(site):
    name, call = RATE_SITES[site]
    for value in (float("nan"), 1.0, -0.1, float("inf")):
        with raises_clean(ValueError, rf"^{name} must be in \[0, 1\), got "):
            call(value)
    for value in (True, "0.5", None):
        with raises_clean(TypeError, rf"^{name} must be a float in \[0, 1\), got "):
            call(value)


# --------------------------------------------------------------------------- elementwise functions and shapes

ACTIVATION_SITES = {
    "lstm": traced(lambda kw: jl.lstm(PARAMS, XS, **kw)),
    "lstm_cell": traced(lambda kw: jl.lstm_cell(PARAMS, jl.zeros_carry(H, (B,)), XS[:, 0], **kw)),
    "lstm_variant_cell": traced(
        lambda kw: jl.lstm_variant_cell(DROPPING_PARAMS, jl.zeros_carry(H, (B,)), XS[:, 0], variant=DROPPING, **kw)
    ),
    "stacked_lstm": traced(lambda kw: jl.stacked_lstm(STACK, XS, **kw)),
    "linen LSTM": lambda kw: jl.LSTM(H, **kw),
    "linen LSTMCell": lambda kw: jl.LSTMCell(H, **kw),
    "nnx LSTM": lambda kw: jl.nnx.LSTM(D, H, rngs=nnx.Rngs(0), **kw),
    "nnx LSTMCell": lambda kw: jl.nnx.LSTMCell(D, H, rngs=nnx.Rngs(0), **kw),
}
NOT_ELEMENTWISE = {
    "narrows": (lambda z: z[..., :1], ValueError, r"it returned shape \(2, 1\) and dtype float32"),
    "reduces": (jnp.sum, ValueError, r"it returned shape \(\) and dtype float32"),
    "bools": (lambda z: z > 0, ValueError, r"it returned shape \(2, 3\) and dtype bool"),
    "fails": (lambda z: z.no_such_method(), TypeError, r"it raised AttributeError"),
    "not_callable": ("tanh", TypeError, r"got str 'tanh'"),
}


@pytest.mark.parametrize("bad", list(NOT_ELEMENTWISE))
@pytest.mark.parametrize("argument", ["gate_fn", "activation_fn"])
@pytest.mark.parametrize("site", list(ACTIVATION_SITES))
def test_an_activation_keeps_its_input_shape(site, argument, bad):
    """A shape-changing activation raised "array split does not result in an equal division"."""
    fn, exc_type, got = NOT_ELEMENTWISE[bad]
    with raises_clean(exc_type, rf"^{argument} must be an elementwise function such as jax.nn.sigmoid.*{got}"):
        ACTIVATION_SITES[site]({argument: fn})


def test_a_custom_elementwise_activation_still_runs():
    hard = jax.nn.hard_sigmoid
    _, hs = jl.lstm(PARAMS, XS, gate_fn=hard)
    carry, outputs = jl.zeros_carry(H, (B,)), []
    for t in range(T):
        carry, h = jl.lstm_cell(PARAMS, carry, XS[:, t], gate_fn=hard)
        outputs.append(h)
    np.testing.assert_allclose(hs, jnp.stack(outputs, axis=1), rtol=1e-6, atol=1e-6)


def test_merge_directions_needs_two_outputs_of_one_shape():
    """Mismatched directions raised JAX's broadcasting or concatenation error."""
    for merge in jl.MERGE_MODES:
        with raises_clean(ValueError, r"^forward and backward must have the same shape, got \(2, 3\) and \(2, 4\)"):
            jl.merge_directions(jnp.ones((2, 3)), jnp.ones((2, 4)), merge)
    with raises_clean(TypeError, r"^merge must be a str, one of 'concat', 'sum', 'mul', 'ave', got ArrayImpl"):
        jl.merge_directions(jnp.ones((2, 3)), jnp.ones((2, 3)), jnp.ones(2))  # type: ignore[arg-type]


def test_batch_shape_may_be_one_int_as_numpy_shapes_may():
    """``zeros_carry(H, 2)`` raised "'int' object is not iterable"."""
    assert jl.zeros_carry(H, 2).h.shape == jl.zeros_carry(H, (2,)).h.shape == (2, H)
    assert jl.zeros_carry(H, [2, 1]).c.shape == (2, 1, H)
    for value, exc_type, message in (
        (2.0, TypeError, r"^batch_shape must be a tuple of ints >= 0 \(or one int\), got float 2.0"),
        ((2, -1), ValueError, r"^batch_shape\[1\] must be an int >= 0, got -1"),
        (("2",), TypeError, r"^batch_shape\[0\] must be an int >= 0, got str '2'"),
        (True, TypeError, r"^batch_shape must be a tuple of ints >= 0 \(or one int\), got the bool True"),
    ):
        with raises_clean(exc_type, message):
            jl.zeros_carry(H, value)


def test_a_flat_variant_option_points_to_variant_in_linen_as_in_nnx():
    message = re.escape("got peepholes=True: the LSTM variant options are one option now, write variant=")
    with raises_clean(TypeError, r"^jl.LSTM " + message):
        jl.LSTM(H, peepholes=True)  # type: ignore[call-arg]
    with raises_clean(TypeError, r"^jl.nnx.LSTM " + message):
        jl.nnx.LSTM(D, H, peepholes=True, rngs=nnx.Rngs(0))
