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
