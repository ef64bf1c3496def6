"""A sweep of the functional API over shapes, dtypes and flags, good and bad alike.

Hypothesis draws calls of ``jl.lstm`` and ``jl.stacked_lstm`` with inputs that
are sometimes right and often wrong (a wrong size, rank, dtype, a tuple for a
carry, lengths out of range, a string for a flag). Each call must either work
or raise jaxlstm's own ``ValueError``/``TypeError``, raised in jaxlstm's code:
never an internal JAX error the user would have to decode. The calls are
traced with ``jax.eval_shape``, so the checks (which all run at trace time)
are exercised without compiling anything.
"""

import pathlib

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings

import jaxlstm as jl

PACKAGE = pathlib.Path(jl.__file__).resolve().parent
H = 3

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16, jnp.int32, jnp.complex64, jnp.bool_]


@st.composite
def calls(draw):
    batch = draw(st.sampled_from([(), (0,), (1,), (2,), (1, 2)]))
    time = draw(st.integers(0, 3))
    features = draw(st.integers(0, 3))
    input_size = draw(st.sampled_from([features, 1, 2]))  # 0 too: hand-made params with an empty w_ih
    xs = jnp.zeros((*batch, time, features), draw(st.sampled_from(DTYPES)))
    kwargs = {}
    carry_kind = draw(st.sampled_from(["none", "good", "wide", "complex", "int", "tuple"]))
    if carry_kind != "none":
        size = H + 1 if carry_kind == "wide" else H
        dtype = {"complex": jnp.complex64, "int": jnp.int32}.get(carry_kind, jnp.float32)
        h = jnp.zeros((*batch, size), dtype)
        kwargs["carry"] = (h, h) if carry_kind == "tuple" else jl.LSTMCarry(h, h)
    lengths = draw(st.sampled_from(["none", "good", "big", "negative", "float", "wrong_shape", "uint32_max"]))
    if lengths != "none":
        values = {
            "good": np.full(batch, min(time, 1), np.int32),
            "big": np.full(batch, 2**32 + 3, np.int64),
            "negative": np.full(batch, -1, np.int32),
            "float": np.full(batch, 1.0, np.float32),
            "wrong_shape": np.zeros((*batch, 2), np.int32),
            "uint32_max": np.full(batch, 4294967295, np.uint32),
        }[lengths]
        kwargs["seq_lengths"] = values
    mask = draw(st.sampled_from(["none", "good", "int", "short"]))
    if mask != "none":
        shape = (*batch, time if mask != "short" else time + 1)
        kwargs["mask"] = jnp.ones(shape, jnp.int32 if mask == "int" else jnp.bool_)
    kwargs["reverse"] = draw(st.sampled_from([False, True, "no", 1]))
    kwargs["masked_output"] = draw(st.sampled_from(["zeros", "previous", "last"]))
    kwargs["gradient"] = draw(st.sampled_from(["fused", "autodiff", "exact"]))
    return input_size, xs, kwargs


def _params(input_size):
    if input_size == 0:
        params = jl.init_params(jax.random.key(0), 1, H)
        return params._replace(w_ih=jnp.zeros((0, 4 * H)))
    return jl.init_params(jax.random.key(0), input_size, H)


def _call_or_clean_error(call):
    try:
        jax.eval_shape(call)
    except (ValueError, TypeError) as error:
        frames = []
        traceback = error.__traceback__
        while traceback is not None:
            frames.append(pathlib.Path(traceback.tb_frame.f_code.co_filename).resolve())
            traceback = traceback.tb_next
        assert PACKAGE in frames[-1].parents, f"{type(error).__name__} from {frames[-1]}: {error}"
        assert not isinstance(error, jax.errors.JAXTypeError), error
        assert "jax" not in type(error).__module__, error


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls())
def test_lstm_works_or_says_why(call):
    input_size, xs, kwargs = call
    params = _params(input_size)
    _call_or_clean_error(lambda: jl.lstm(params, xs, **kwargs))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls(), st.integers(1, 2), st.booleans())
def test_stacked_lstm_works_or_says_why(call, num_layers, bidirectional):
    input_size, xs, kwargs = call
    stack = jl.init_stack(jax.random.key(0), max(input_size, 1), H, num_layers=num_layers, bidirectional=bidirectional)
    carry = kwargs.pop("carry", None)
    if carry is not None:  # one carry per layer and direction
        kwargs["carries"] = tuple((carry,) * (2 if bidirectional else 1) for _ in range(num_layers))
    if bidirectional:
        kwargs.pop("reverse")
    _call_or_clean_error(lambda: jl.stacked_lstm(stack, xs, **kwargs))


def test_zero_steps_with_lengths_mask_or_resets_returns_the_initial_carry():
    """A (B, 0, D) input with per-step flags: no step runs (found by the sweep: it raised IndexError)."""
    params = jl.init_params(jax.random.key(0), 2, H)
    carry = jl.LSTMCarry(jnp.full((2, H), 0.5), jnp.full((2, H), -0.25))
    xs = jnp.zeros((2, 0, 2))
    for flags in (
        dict(seq_lengths=np.array([0, 0])),
        dict(mask=jnp.ones((2, 0), bool)),
        dict(resets=jnp.ones((2, 0), bool)),
    ):
        final, hs = jl.lstm(params, xs, carry, **flags)
        assert hs.shape == (2, 0, H)
        np.testing.assert_array_equal(final.h, carry.h)
        np.testing.assert_array_equal(final.c, carry.c)


# --------------------------------------------------------------------------- every entry point, every argument
#
# One bad value at a time, in every argument of every public entry point (the functional core, the
# variants, linen, NNX, explain, summary, backend_for; the interop converters have their own sweep in
# tests/test_interop_strict.py). Each outcome is one of:
#   clear:  jaxlstm's own TypeError/ValueError, raised in its code, naming the argument;
#   vague:  jaxlstm's error, but the message does not name the argument;
#   raw:    an error raised outside jaxlstm (JAX, Flax, NumPy, Python) or of another type;
#   silent: no error at all, for a value that must be refused;
#   crash:  anything that is not an Exception (the process would end).
# ``python tests/test_input_sweep.py`` prints the counts per entry point.

import collections  # noqa: E402
import functools  # noqa: E402

import flax.linen as nn  # noqa: E402
from flax import nnx  # noqa: E402

_B, _T, _D, _H = 2, 3, 3, 4
_KEY = jax.random.key(0)
_XS = jnp.ones((_B, _T, _D))
_PEEP = jl.LSTMVariant(peepholes=True)
_DROP = jl.LSTMVariant(input_dropout=0.5)


def _lambda_narrowing(z):
    return z[..., :1]


# Bad values by kind of argument: each must be refused wherever an argument of that kind is.
BAD = {
    "size": [0, -1, 2.5, "3", True, None, jnp.ones(2)],
    "opt_size": [0, -2, 2.5, "3", True],
    "flag": ["no", "False", 1, 0.0, None, jnp.array([True, False])],
    "opt_flag": ["yes", 1, 0.0, jnp.array([True])],
    "dtype": [jnp.int32, "float17", jnp.complex64, jnp.bool_, None, "int8"],
    "opt_dtype": [jnp.int32, "float17", jnp.complex64, "uint8"],
    "key": [0, 42.0, jnp.ones(2), jnp.zeros(3, jnp.uint32), jax.random.split(_KEY, 2), None],
    "opt_key": [42, jnp.ones(2), jax.random.split(_KEY, 3)],
    "rate": [1.0, -0.1, float("nan"), float("inf"), "0.5", True, None],
    "real": [float("nan"), float("inf"), "1.0", None, True],
    "opt_positive_real": [0.0, -1.0, float("nan"), "1"],
    "choice": ["bogus", None, 3, jnp.ones(2), ["concat"]],
    "fn": ["tanh", None, _lambda_narrowing, jnp.sum, lambda z: z > 0],
    "opt_fn": ["zeros", 3],
    "batch_shape": [2.0, (-1,), ("2",), "ab", True, None],
    "variant": [{"peepholes": True}, "peepholes", 3],
    "req_variant": [None, {"peepholes": True}, "peepholes"],
    "xs": [[[[1.0] * _D] * _T] * _B, jnp.ones((_B, _T, _D), jnp.complex64), jnp.ones((_D,)), jnp.ones((_B, _T, _D + 1))],
    "module_x": [[[[1.0] * _D] * _T] * _B, jnp.ones((_B, _T, _D), jnp.complex64), jnp.ones((_D,))],
    "x": [[1.0] * _D, jnp.ones((_B, _D), jnp.int32), jnp.ones((_B, _D + 1)), jnp.ones((_B, _D), jnp.complex64)],
    "cell_x": [[1.0] * _D, jnp.ones((_B, _D + 1)), jnp.ones((_B, _D), jnp.complex64)],  # ints: cast, as Flax
    "carry": [
        (jnp.zeros((_B, _H)), jnp.zeros((_B, _H))),
        jl.zeros_carry(_H + 1, (_B,)),
        jl.zeros_carry(_H, (_B + 1,)),
        jl.LSTMCarry(jnp.zeros((_B, _H), jnp.int32), jnp.zeros((_B, _H), jnp.int32)),
        jnp.zeros((_B, _H)),
    ],
    "stack_carry": [jl.zeros_carry(_H, (_B,)), ((jl.zeros_carry(_H + 1, (_B,)),),) * 2, (((jnp.zeros((_B, _H)),) * 2,),) * 2],
    "seq_lengths": [np.array([1.0, 2.0]), np.array([1, 2, 3]), np.array([1, 9]), np.array([-1, 1]), [1, 2]],
    "flags": [jnp.ones((_B, _T), jnp.int32), jnp.ones((_B, _T + 1), bool), [[True] * _T] * _B],
    "params": [{"w_ih": 1}, (jnp.ones((_D, 4 * _H)),) * 3, jl.init_params(_KEY, _D, _H + 1)._replace(b=jnp.ones(3))],
    "stack": [jl.init_params(_KEY, _D, _H), (), ((jl.init_params(_KEY, _D, _H),) * 3,), "stack"],
    "array": ["a", [1.0, 2.0], jnp.ones((2, 5))],
    "final_carries": ["carries", (), jl.zeros_carry(_H, (_B,))],
    "model": ["model", jl.init_params(_KEY, _D, _H)],
    "rngs": [0, "rngs", None],
    "call_rngs": [42, jnp.ones(2)],
    "cell": [None, "GRU", jl.LSTMVariant(), jl.cells.GRU],
    "gru_params": [jl.init_params(_KEY, _D, _H), tuple(jl.init_gru_params(_KEY, _D, _H)), {"w_ih": 1},
                   jl.init_gru_params(_KEY, _D, _H)._replace(b_ih=jnp.ones(3))],
    "gru_carry": [jl.zeros_carry(_H, (_B,)), jnp.zeros((_B, _H + 1)), jnp.zeros((_B, _H), jnp.int32), [[0.0] * _H] * _B],
    "rnn_stack": [jl.init_gru_params(_KEY, _D, _H), (), ((jl.init_gru_params(_KEY, _D, _H),) * 3,), "stack"],
}


def _eval(call):
    """``call`` traced with ``jax.eval_shape`` (the checks run at trace time; nothing compiles)."""
    return lambda **kw: jax.eval_shape(lambda: call(**kw))


def _linen_lstm(x=_XS, call=None, **fields):
    module = jl.LSTM(**{"features": _H, **fields})
    variables = jax.eval_shape(module.init, _KEY, jnp.ones((_B, _T, _D)))
    return jax.eval_shape(lambda v: module.apply(v, x, **(call or {})), variables)


def _linen_call(**call):
    x = call.pop("x", _XS)
    return _linen_lstm(x, call, num_layers=2, dropout=0.5) if "deterministic" in call else _linen_lstm(x, call)


def _linen_cell(**fields):
    cell = jl.LSTMCell(**{"features": _H, **fields})
    return jax.eval_shape(lambda: cell.init(_KEY, jl.zeros_carry(_H, (_B,)), _XS[:, 0]))


def _linen_cell_call(carry=None, x=None):
    cell = jl.LSTMCell(_H)
    variables = jax.eval_shape(cell.init, _KEY, jl.zeros_carry(_H, (_B,)), _XS[:, 0])
    carry = jl.zeros_carry(_H, (_B,)) if carry is None else carry
    x = _XS[:, 0] if x is None else x
    return jax.eval_shape(lambda v: cell.apply(v, carry, x), variables)


def _nnx_lstm(**kwargs):
    return jl.nnx.LSTM(**{"in_features": _D, "features": _H, "rngs": nnx.Rngs(0), **kwargs})


def _nnx_call(**call):
    model = _nnx_lstm(num_layers=2, dropout=0.5)
    x = call.pop("x", _XS)
    return model(x, **call)


def _nnx_cell(**kwargs):
    return jl.nnx.LSTMCell(**{"in_features": _D, "hidden_features": _H, "rngs": nnx.Rngs(0), **kwargs})


def _nnx_cell_call(carry=None, x=None):
    cell = jl.nnx.LSTMCell(_D, _H, rngs=nnx.Rngs(0))
    return cell(jl.zeros_carry(_H, (_B,)) if carry is None else carry, _XS[:, 0] if x is None else x)


class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        return jl.LSTM(_H)(x)


# entry point -> (call, {argument: kind}); the call's defaults are a good call, so each case changes one argument.
_NO_RNGS = object()  # the GRU entries' default: "give a good nnx.Rngs" (None is one of the bad values)

ENTRY_POINTS = {
    "init_params": (
        lambda key=_KEY, input_size=_D, hidden_size=_H, **kw: jl.init_params(key, input_size, hidden_size, **kw),
        dict(key="key", input_size="size", hidden_size="size", scheme="choice", dtype="dtype"),
    ),
    "init_variant_params": (
        lambda key=_KEY, input_size=_D, hidden_size=_H, variant=_PEEP, **kw: jl.init_variant_params(
            key, input_size, hidden_size, variant, **kw
        ),
        dict(key="key", input_size="size", hidden_size="size", variant="req_variant", scheme="choice", dtype="dtype"),
    ),
    "init_stack": (
        lambda key=_KEY, input_size=_D, hidden_size=_H, **kw: jl.init_stack(key, input_size, hidden_size, **kw),
        dict(
            key="key", input_size="size", hidden_size="size", num_layers="size", bidirectional="flag",
            merge="choice", scheme="choice", dtype="dtype", variant="variant",
        ),
    ),
    "zeros_carry": (
        lambda hidden_size=_H, **kw: jl.zeros_carry(hidden_size, **kw),
        dict(hidden_size="size", batch_shape="batch_shape", dtype="dtype"),
    ),
    "lstm_cell": (
        _eval(
            lambda params=None, carry=None, x=None, **kw: jl.lstm_cell(
                jl.init_params(_KEY, _D, _H) if params is None else params,
                jl.zeros_carry(_H, (_B,)) if carry is None else carry,
                _XS[:, 0] if x is None else x,
                **kw,
            )
        ),
        dict(params="params", carry="carry", x="x", gate_fn="fn", activation_fn="fn"),
    ),
    "lstm": (
        _eval(lambda params=None, xs=_XS, **kw: jl.lstm(jl.init_params(_KEY, _D, _H) if params is None else params, xs, **kw)),
        dict(
            params="params", xs="xs", carry="carry", seq_lengths="seq_lengths", mask="flags", resets="flags",
            reset_carry="carry", masked_output="choice", reverse="flag", unroll="size", gradient="choice",
            gate_fn="fn", activation_fn="fn", checkpoint_every="opt_size", variant="variant", dropout_key="opt_key",
            deterministic="opt_flag", backend="choice", cudnn_precision="choice",
        ),
    ),
    "lstm_variant_cell": (
        _eval(
            lambda params=None, carry=None, x=None, variant=_PEEP, **kw: jl.lstm_variant_cell(
                jl.init_variant_params(_KEY, _D, _H, _PEEP) if params is None else params,
                jl.zeros_carry(_H, (_B,)) if carry is None else carry,
                _XS[:, 0] if x is None else x,
                variant=variant,
                **kw,
            )
        ),
        dict(params="params", carry="carry", x="x", variant="req_variant", gate_fn="fn", activation_fn="fn"),
    ),
    "LSTMVariant": (
        lambda **kw: jl.LSTMVariant(**kw),
        dict(
            proj_size="opt_size", peepholes="flag", layer_norm="flag", cifg="flag", forget_bias="real",
            cell_clip="opt_positive_real", input_dropout="rate", recurrent_dropout="rate", zoneout_h="rate",
            zoneout_c="rate", layer_norm_epsilon="opt_positive_real",
        ),
    ),
    "stacked_lstm": (
        _eval(
            lambda stack=None, xs=_XS, **kw: jl.stacked_lstm(
                jl.init_stack(_KEY, _D, _H, num_layers=2) if stack is None else stack, xs, **kw
            )
        ),
        dict(
            stack="stack", xs="xs", carries="stack_carry", seq_lengths="seq_lengths", mask="flags", resets="flags",
            reset_carries="stack_carry", masked_output="choice", merge="choice", dropout="rate",
            dropout_key="opt_key", unroll="size", reverse="flag", gradient="choice", gate_fn="fn",
            activation_fn="fn", variant="variant", deterministic="opt_flag", checkpoint_every="opt_size",
            backend="choice", cudnn_precision="choice",
        ),
    ),
    "merge_directions": (
        lambda forward=jnp.ones((2, 3)), backward=jnp.ones((2, 3)), **kw: jl.merge_directions(forward, backward, **kw),
        dict(forward="array", backward="array", merge="choice"),
    ),
    "last_output": (
        lambda final_carries=((jl.zeros_carry(_H, (_B,)),),), **kw: jl.last_output(final_carries, **kw),
        dict(final_carries="final_carries", merge="choice"),
    ),
    "explain": (
        lambda batch=_B, time=_T, input_size=_D, units=_H, **kw: jl.explain(batch, time, input_size, units, **kw),
        dict(
            batch="size", time="size", input_size="size", units="size", num_layers="size", bidirectional="flag",
            merge="choice", return_sequences="flag", proj_size="opt_size", peepholes="flag", layer_norm="flag",
            cifg="flag", cell="choice",
        ),
    ),
    "backend_for": (  # a query: it checks the arguments that decide the backend (the call checks the rest)
        lambda params=None, xs=_XS, **kw: jl.backend_for(jl.init_params(_KEY, _D, _H) if params is None else params, xs, **kw),
        dict(backend="choice", cudnn_precision="choice"),
    ),
    "summary": (lambda model=_Tiny(): jl.summary(model, _XS), dict(model="model")),
    "linen LSTM": (
        lambda **fields: _linen_lstm(**fields),
        dict(
            features="size", num_layers="size", bidirectional="flag", merge="choice", return_sequences="flag",
            return_carry="flag", dropout="rate", dtype="opt_dtype", param_dtype="dtype", init_scheme="choice",
            unroll="size", reverse="flag", masked_output="choice", gradient="choice", gate_fn="fn",
            activation_fn="fn", learn_initial_carry="flag", stateful="flag", checkpoint_every="opt_size",
            variant="variant", backend="choice", cudnn_precision="choice",
        ),
    ),
    "linen LSTM call": (
        _linen_call,
        dict(x="module_x", seq_lengths="seq_lengths", mask="flags", resets="flags", initial_carry="stack_carry",
             deterministic="flag"),
    ),
    "linen LSTMCell": (
        _linen_cell,
        dict(features="size", init_scheme="choice", dtype="opt_dtype", param_dtype="dtype", gate_fn="fn",
             activation_fn="fn", learn_initial_carry="flag", kernel_init="opt_fn", carry_init="opt_fn"),
    ),
    "linen LSTMCell call": (_linen_cell_call, dict(carry="carry", x="cell_x")),
    "nnx LSTM": (
        _nnx_lstm,
        dict(
            in_features="size", features="size", num_layers="size", bidirectional="flag", merge="choice",
            return_sequences="flag", return_carry="flag", dropout="rate", dtype="opt_dtype", param_dtype="dtype",
            init_scheme="choice", unroll="size", reverse="flag", masked_output="choice", gradient="choice",
            gate_fn="fn", activation_fn="fn", learn_initial_carry="flag", stateful="flag",
            checkpoint_every="opt_size", variant="variant", backend="choice", cudnn_precision="choice",
            deterministic="flag", rngs="rngs",
        ),
    ),
    "nnx LSTM call": (
        _nnx_call,
        dict(x="module_x", seq_lengths="seq_lengths", mask="flags", resets="flags", initial_carry="stack_carry",
             deterministic="opt_flag", rngs="call_rngs"),
    ),
    "nnx LSTMCell": (
        _nnx_cell,
        dict(in_features="size", hidden_features="size", init_scheme="choice", dtype="opt_dtype",
             param_dtype="dtype", gate_fn="fn", activation_fn="fn", learn_initial_carry="flag", kernel_init="opt_fn",
             carry_init="opt_fn", rngs="rngs"),
    ),
    "nnx LSTMCell call": (_nnx_cell_call, dict(carry="carry", x="cell_x")),
    # the GRU and the engine (jaxlstm.engine, jaxlstm.rnn_stack, jaxlstm.gru*)
    "init_gru_params": (
        lambda key=_KEY, input_size=_D, hidden_size=_H, **kw: jl.init_gru_params(key, input_size, hidden_size, **kw),
        dict(key="key", input_size="size", hidden_size="size", dtype="dtype"),
    ),
    "init_rnn_stack": (
        lambda cell=jl.cells.GRU(), key=_KEY, input_size=_D, hidden_size=_H, **kw: jl.init_rnn_stack(
            cell, key, input_size, hidden_size, **kw
        ),
        dict(cell="cell", key="key", input_size="size", hidden_size="size", num_layers="size",
             bidirectional="flag", merge="choice", dtype="dtype"),
    ),
    "gru": (
        _eval(
            lambda params=None, xs=_XS, carry=None, **kw: jl.gru(
                jl.init_gru_params(_KEY, _D, _H) if params is None else params, xs, carry, **kw
            )
        ),
        dict(params="gru_params", xs="xs", carry="gru_carry", seq_lengths="seq_lengths", mask="flags",
             resets="flags", reverse="flag", masked_output="choice", gradient="choice", unroll="size",
             checkpoint_every="opt_size"),
    ),
    "rnn": (
        _eval(lambda cell=jl.cells.GRU(), **kw: jl.rnn(cell, jl.init_gru_params(_KEY, _D, _H), _XS, **kw)),
        dict(cell="cell", reverse="flag", gradient="choice"),
    ),
    "gru_cell": (
        _eval(
            lambda params=None, carry=None, x=None: jl.gru_cell(
                jl.init_gru_params(_KEY, _D, _H) if params is None else params,
                jnp.zeros((_B, _H)) if carry is None else carry,
                _XS[:, 0] if x is None else x,
            )
        ),
        dict(params="gru_params", carry="gru_carry", x="x"),
    ),
    "stacked_rnn": (
        _eval(
            lambda cell=jl.cells.GRU(), stack=None, **kw: jl.stacked_rnn(
                cell, jl.init_rnn_stack(jl.cells.GRU(), _KEY, _D, _H, num_layers=2) if stack is None else stack, _XS, **kw
            )
        ),
        dict(cell="cell", stack="rnn_stack", merge="choice", dropout="rate", dropout_key="opt_key",
             deterministic="opt_flag", reverse="flag", seq_lengths="seq_lengths"),
    ),
    "linen GRU": (
        lambda x=_XS, deterministic=True, seq_lengths=None, **fields: jax.eval_shape(
            lambda: jl.GRU(**{"features": _H, **fields}).init(
                {"params": _KEY, "dropout": _KEY}, x, deterministic=deterministic, seq_lengths=seq_lengths
            )
        ),
        dict(features="size", num_layers="size", bidirectional="flag", merge="choice", return_sequences="flag",
             return_carry="flag", dropout="rate", dtype="opt_dtype", param_dtype="dtype", reverse="flag",
             learn_initial_carry="flag", masked_output="choice", gradient="choice", checkpoint_every="opt_size",
             x="module_x", deterministic="flag", seq_lengths="seq_lengths"),
    ),
    "linen GRUCell": (
        lambda **fields: jax.eval_shape(
            lambda: jl.GRUCell(**{"features": _H, **fields}).init(_KEY, jnp.zeros((_B, _H)), _XS[:, 0])
        ),
        dict(features="size", dtype="opt_dtype", param_dtype="dtype"),
    ),
    "nnx GRU": (
        lambda in_features=_D, features=_H, rngs=_NO_RNGS, **kw: jl.nnx.GRU(
            in_features, features, rngs=nnx.Rngs(0) if rngs is _NO_RNGS else rngs, **kw
        ),
        dict(in_features="size", features="size", num_layers="size", bidirectional="flag", merge="choice",
             return_sequences="flag", return_carry="flag", dropout="rate", dtype="opt_dtype", param_dtype="dtype",
             reverse="flag", learn_initial_carry="flag", deterministic="flag", rngs="rngs"),
    ),
    "nnx GRU call": (
        lambda x=_XS, **kw: jl.nnx.GRU(_D, _H, rngs=nnx.Rngs(0))(x, **kw),
        dict(x="module_x", seq_lengths="seq_lengths", deterministic="opt_flag"),
    ),
    "nnx GRUCell": (
        lambda in_features=_D, hidden_features=_H, rngs=_NO_RNGS, **kw: jl.nnx.GRUCell(
            in_features, hidden_features, rngs=nnx.Rngs(0) if rngs is _NO_RNGS else rngs, **kw
        ),
        dict(in_features="size", hidden_features="size", dtype="opt_dtype", param_dtype="dtype", rngs="rngs"),
    ),
}

def _outcome(entry: str, argument: str, value) -> tuple[str, str]:
    call, _ = ENTRY_POINTS[entry]
    try:
        call(**{argument: value})
    except (TypeError, ValueError) as error:
        frames = []
        traceback = error.__traceback__
        while traceback is not None:
            frames.append(pathlib.Path(traceback.tb_frame.f_code.co_filename).resolve())
            traceback = traceback.tb_next
        message = str(error)
        if PACKAGE not in frames[-1].parents or "jax" in type(error).__module__:
            return "raw", f"{type(error).__name__} from {frames[-1].name}: {message[:160]}"
        if argument not in message:
            return "vague", message[:200]
        return "clear", message[:200]
    except Exception as error:  # noqa: BLE001  (the sweep's point: classify every outcome)
        return "raw", f"{type(error).__name__}: {str(error)[:160]}"
    except BaseException as error:  # noqa: BLE001
        return "crash", f"{type(error).__name__}: {str(error)[:160]}"
    return "silent", "accepted"


def _describe(value) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"array {value.dtype}{tuple(value.shape)}"
    if callable(value):
        return getattr(value, "__name__", type(value).__name__)
    text = repr(value)
    return text if len(text) < 40 else text[:37] + "..."


def sweep():
    """Every (entry point, argument, bad value) with its outcome and message."""
    rows = []
    for entry, (_, arguments) in ENTRY_POINTS.items():
        for argument, kind in arguments.items():
            for value in BAD[kind]:
                outcome, message = _outcome(entry, argument, value)
                rows.append((entry, argument, _describe(value), outcome, message))
    return rows


@functools.cache
def _sweep_rows():
    return sweep()


def test_every_bad_argument_of_every_entry_point_gets_a_clear_error():
    rows = _sweep_rows()
    assert len(rows) > 400
    failures = [row for row in rows if row[3] != "clear"]
    assert not failures, "\n".join(f"{e}({a}={v}): {o}: {m}" for e, a, v, o, m in failures)


if __name__ == "__main__":
    sweep_rows = sweep()
    for row in sweep_rows:
        if row[3] != "clear":
            print(" | ".join(row))
    counts = collections.Counter(row[3] for row in sweep_rows)
    print(f"{len(sweep_rows)} bad inputs over {len(ENTRY_POINTS)} entry points:", dict(counts))
    print(", ".join(f"{entry}: {n}" for entry, n in collections.Counter(row[0] for row in sweep_rows).items()))
