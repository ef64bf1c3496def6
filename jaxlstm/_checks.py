"""The shared input validation behind jaxlstm's error messages.

Every check runs at trace time on static shapes and dtypes, so it costs
nothing inside ``jit``. Messages name the argument, the expected and the
actual value, and point to the section of ``docs/shapes.md`` that explains it.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from typing import Any, Literal, overload

import jax
import jax.core  # jax.core.Tracer: imported by name, so that type checkers know the submodule
import jax.numpy as jnp
import numpy as np

from ._types import LSTMCarry, LSTMParams

GUIDE = "docs/shapes.md"


def _see(section: str) -> str:
    """Where the message is explained: the guide's section, also printed by ``jaxlstm docs``."""
    return f"; see {GUIDE}#{section} (jaxlstm docs shapes#{section})"


# The guide's section for an option, by argument name (for messages of one_of and rate).
_SECTIONS = {
    "merge": "bidirectional-and-merge-modes",
    "masked_output": "masks-and-resets",
    "dropout": "stacking",
}


def _see_for(name: str) -> str:
    section = _SECTIONS.get(name.rsplit(".", 1)[-1])
    return _see(section) if section else ""


def positive_int(value, name: str) -> int:
    """``value`` as an int >= 1, or a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int >= 1, got the bool {value!r}" + _see("units-cells-and-time-steps"))
    try:
        as_int = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an int >= 1, got {type(value).__name__} {value!r}" + _see("units-cells-and-time-steps")
        ) from None
    if as_int < 1:
        raise ValueError(f"{name} must be an int >= 1, got {as_int}" + _see("units-cells-and-time-steps"))
    return as_int


def one_of(value, allowed: Sequence[str], name: str) -> str:
    """One of the strings ``allowed`` (an array or list is refused before any comparison)."""
    if not isinstance(value, str):
        raise TypeError(
            f"{name} must be a str, one of {', '.join(map(repr, allowed))}, got {described(value)}" + _see_for(name)
        )
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}" + _see_for(name))
    return value


# ----------------------------------------------------------------------------- one check per kind of value
#
# Every public entry point (functional core, variants, linen, NNX, explain) checks its booleans, dtypes,
# keys and numbers with these, so a value means the same wherever it is given. ``see`` is appended to the
# message (a pointer to the guide that explains the argument); by default the section of docs/shapes.md
# that _SECTIONS names for the argument, if any.


def described(value) -> str:
    """``value`` for a message: an array by its dtype and shape, anything else by its type and (short) repr."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{type(value).__name__} of dtype {value.dtype} and shape {tuple(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


@overload
def flag(value: Any, name: str, *, allow_none: Literal[False] = False, see: str | None = None) -> bool: ...
@overload
def flag(value: Any, name: str, *, allow_none: bool, see: str | None = None) -> bool | None: ...
def flag(value: Any, name: str, *, allow_none: bool = False, see: str | None = None) -> bool | None:
    """``value`` as a Python bool: ``True``/``False``, a NumPy bool, or a concrete 0-d bool array (NumPy or
    JAX). Anything else is a TypeError naming ``name``: a truthy string such as ``"no"`` must not mean True,
    nor ``1``. ``allow_none``: ``None`` passes through (an option whose default is decided later)."""
    see = _see_for(name) if see is None else see
    expected = "None, True or False" if allow_none else "True or False"
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be {expected}, got None" + see)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if hasattr(value, "dtype") and hasattr(value, "shape") and value.dtype == np.bool_ and value.shape == ():
        if isinstance(value, jax.core.Tracer):
            raise TypeError(
                f"{name} must be {expected} known when the function is traced, got a traced bool array: "
                f"it decides what is computed, so pass it as a static argument "
                f"(jax.jit(..., static_argnames=...)) or as a Python bool" + see
            )
        return bool(value)
    raise TypeError(f"{name} must be {expected}, got {described(value)}" + see)


@overload
def float_dtype(value: Any, name: str, *, allow_none: Literal[False] = False, see: str = "") -> jnp.dtype: ...
@overload
def float_dtype(value: Any, name: str, *, allow_none: bool, see: str = "") -> jnp.dtype | None: ...
def float_dtype(value: Any, name: str, *, allow_none: bool = False, see: str = "") -> jnp.dtype | None:
    """``value`` as a real floating ``jnp.dtype`` (float16, bfloat16, float32, float64, ...): a parameter
    or computation dtype. Integer, bool and complex dtypes are refused (integer weights would be all
    zeros), and so is a name NumPy does not know (``'float17'``). ``allow_none``: ``None`` passes through."""
    if value is None and allow_none:
        return None
    expected = ("None or " if allow_none else "") + "a real floating dtype such as jnp.float32, jnp.bfloat16 or 'float16'"
    if isinstance(value, (bool, np.bool_)) or value is None:
        raise TypeError(f"{name} must be {expected}, got {described(value)}" + see)
    try:
        dtype = jnp.dtype(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be {expected}, got {described(value)}, which is not a dtype" + see) from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must be {expected}, got {dtype}" + see)
    return dtype


# Legacy raw keys (jax.random.PRNGKey(0)): uint32 key data of threefry (2,) or rbg and unsafe_rbg (4,).
_RAW_KEY_SHAPES = ((2,), (4,))


@overload
def prng_key(value: Any, name: str, *, allow_none: Literal[False] = False, see: str = "") -> jax.Array: ...
@overload
def prng_key(value: Any, name: str, *, allow_none: bool, see: str = "") -> jax.Array | None: ...
def prng_key(value: Any, name: str, *, allow_none: bool = False, see: str = "") -> jax.Array | None:
    """``value`` if it is one JAX PRNG key: a typed key of shape ``()`` (``jax.random.key(0)``) or a
    legacy raw ``uint32`` key (``jax.random.PRNGKey(0)``). An int seed, a float array or a batch of
    keys is a TypeError/ValueError naming ``name``. ``allow_none``: ``None`` passes through."""
    expected = ("None or " if allow_none else "") + "a JAX PRNG key such as jax.random.key(0)"
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be {expected}, got None" + see)
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        hint = f" (for a seed, pass jax.random.key({value!r}))" if isinstance(value, (int, np.integer)) else ""
        raise TypeError(f"{name} must be {expected}, got {described(value)}{hint}" + see)
    if jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
        if value.shape != ():
            raise ValueError(
                f"{name} must be one PRNG key (shape ()), got a batch of keys of shape {tuple(value.shape)}; "
                f"pass one of them, e.g. {name}[0]" + see
            )
        return value
    if value.dtype == np.uint32 and tuple(value.shape) in _RAW_KEY_SHAPES:
        return value
    raise TypeError(f"{name} must be {expected}, got {described(value)}" + see)


def real(value, name: str, *, see: str | None = None) -> float:
    """``value`` as a finite Python float: an int or float (Python or NumPy), not a bool, NaN or infinity."""
    see = _see_for(name) if see is None else see
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {described(value)}" + see)
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value!r}" + see)
    return float(value)


def rate(value, name: str, *, see: str | None = None) -> float:
    """A probability in [0, 1), e.g. a dropout rate."""
    see = _see_for(name) if see is None else see
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a float in [0, 1), got {described(value)}" + see)
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}" + see)
    return float(value)


def batch_shape(value, name: str = "batch_shape") -> tuple[int, ...]:
    """``value`` as a tuple of ints >= 0: a tuple or list of them, or one int (``2`` means ``(2,)``, as NumPy)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a tuple of ints >= 0 (or one int), got the bool {value!r}")
    if not isinstance(value, (tuple, list)):
        if hasattr(value, "__index__"):
            return (_size(value, name),)
        raise TypeError(f"{name} must be a tuple of ints >= 0 (or one int), got {described(value)}")
    return tuple(_size(size, f"{name}[{i}]") for i, size in enumerate(value))


def _size(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int >= 0, got the bool {value!r}")
    try:
        size = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int >= 0, got {described(value)}") from None
    if size < 0:
        raise ValueError(f"{name} must be an int >= 0, got {size}")
    return size


def _array_like(value, name: str):
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise TypeError(f"{name} must be a JAX or NumPy array, got {type(value).__name__}")


def same_shape(first, second, first_name: str, second_name: str, *, see: str = "") -> None:
    """Two arrays of one shape, e.g. the two directions' outputs that ``merge_directions`` combines."""
    _array_like(first, first_name)
    _array_like(second, second_name)
    if tuple(first.shape) != tuple(second.shape):
        raise ValueError(
            f"{first_name} and {second_name} must have the same shape, got {tuple(first.shape)} and "
            f"{tuple(second.shape)}" + see
        )


def params(p) -> None:
    """Checks that ``p`` is an LSTMParams with consistent (D, 4H), (H, 4H), (4H,) shapes."""
    if not isinstance(p, LSTMParams):
        raise TypeError(
            f"params must be a jaxlstm.LSTMParams (w_ih, w_hh, b), got {type(p).__name__}" + _see("parameters")
        )
    for field in LSTMParams._fields:
        _array_like(getattr(p, field), f"params.{field}")
    w_ih, w_hh, b = p
    if w_hh.ndim != 2 or w_hh.shape[1] != 4 * w_hh.shape[0]:
        raise ValueError(
            f"params.w_hh must have shape (hidden_size, 4 * hidden_size), got {tuple(w_hh.shape)}" + _see("parameters")
        )
    hidden = w_hh.shape[0]
    if w_ih.ndim != 2 or w_ih.shape[1] != 4 * hidden:
        raise ValueError(
            f"params.w_ih must have shape (input_size, {4 * hidden}) for hidden_size={hidden}, "
            f"got {tuple(w_ih.shape)}" + _see("parameters")
        )
    if b.shape != (4 * hidden,):
        raise ValueError(
            f"params.b must have shape ({4 * hidden},) for hidden_size={hidden}, got {tuple(b.shape)}"
            + _see("parameters")
        )


def floating(value, name: str, section: str = "inputs") -> None:
    """A real floating array (float16, bfloat16, float32, float64); complex and integer refused."""
    _array_like(value, name)
    if not jnp.issubdtype(value.dtype, jnp.floating):
        hint = ""
        if jnp.issubdtype(value.dtype, jnp.integer) or jnp.issubdtype(value.dtype, jnp.bool_):
            hint = (
                f": cast it, e.g. {name.split('.')[0]}.astype(jnp.float32) (jaxlstm's Flax modules cast bool "
                f"and integer inputs themselves, as Flax's cells do)"
            )
        raise TypeError(f"{name} must have a real floating dtype, got {value.dtype}{hint}" + _see(section))


def inputs(
    xs, input_size: int | None, name: str, *, min_rank: int, layout: str = "(*batch, input)", allow_integers=False
) -> None:
    """Checks an input array: floating (or, with ``allow_integers``, bool or integer: the modules
    cast those), rank >= ``min_rank``, last axis ``input_size`` (if given)."""
    _array_like(xs, name)
    if not (allow_integers and (jnp.issubdtype(xs.dtype, jnp.integer) or jnp.issubdtype(xs.dtype, jnp.bool_))):
        floating(xs, name)
    if xs.ndim < min_rank:
        raise ValueError(
            f"{name} must have shape {layout} with at least {min_rank} dims, "
            f"got {xs.ndim} dims (shape {tuple(xs.shape)})" + _see("inputs")
        )
    if xs.shape[-1] == 0:
        raise ValueError(
            f"{name} has 0 features ({name}.shape={tuple(xs.shape)}); an LSTM reads at least one "
            f"feature per step" + _see("inputs")
        )
    if input_size is not None and xs.shape[-1] != input_size:
        raise ValueError(
            f"{name} has {xs.shape[-1]} features but params expect input_size={input_size} "
            f"({name}.shape={tuple(xs.shape)})" + _see("inputs")
        )


def carry(c, batch_shape: tuple[int, ...], hidden_size: int, name: str) -> None:
    """Checks an LSTMCarry whose h and c must be (*batch_shape, hidden_size)."""
    if not isinstance(c, LSTMCarry):
        if isinstance(c, tuple) and len(c) == 2:
            raise TypeError(
                f"{name} must be a jaxlstm.LSTMCarry(h, c), got a plain {type(c).__name__}; "
                f"wrap it as jaxlstm.LSTMCarry(h, c) so the order h, c is explicit" + _see("carry")
            )
        raise TypeError(f"{name} must be a jaxlstm.LSTMCarry(h, c), got {type(c).__name__}" + _see("carry"))
    expected = (*batch_shape, hidden_size)
    for field in ("h", "c"):
        value = getattr(c, field)
        floating(value, f"{name}.{field}", section="carry")
        if tuple(value.shape) != expected:
            raise ValueError(
                f"{name}.{field} must have shape (*batch, hidden_size) = {expected}, got {tuple(value.shape)}"
                + _see("carry")
            )


def per_sequence_ints(values, batch_shape: tuple[int, ...], name: str) -> None:
    """Checks an integer array with one entry per sequence, e.g. seq_lengths (*batch,)."""
    _array_like(values, name)
    if not jnp.issubdtype(values.dtype, jnp.integer):
        raise TypeError(f"{name} must have an integer dtype, got {values.dtype}" + _see("padding-and-seq_lengths"))
    if tuple(values.shape) != tuple(batch_shape):
        raise ValueError(
            f"{name} must have shape (*batch,) = {tuple(batch_shape)}, one entry per sequence, "
            f"got {tuple(values.shape)}" + _see("padding-and-seq_lengths")
        )


def seq_lengths(values, batch_shape: tuple[int, ...], time: int, name: str = "seq_lengths"):
    """``values`` as int32 ``(*batch,)`` lengths in [0, time].

    Concrete values (NumPy arrays, or JAX arrays outside ``jit``) outside that
    range raise, before any conversion could wrap them (an int64 2**32 + 3 would
    become 3, a uint32 4294967295 would become -1). Traced values cannot be
    inspected: they are clamped to [0, time] (a length past the end means every
    step counts, a negative one none).
    """
    per_sequence_ints(values, batch_shape, name)
    if isinstance(values, jax.core.Tracer):
        return jnp.clip(values, 0, time).astype(jnp.int32)
    concrete = np.asarray(values)
    bad = (concrete < 0) | (concrete > time)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} must be in [0, time] = [0, {time}], got {concrete[index]} at index {index} "
            f"({int(bad.sum())} of {concrete.size} out of range)" + _see("padding-and-seq_lengths")
        )
    return jnp.asarray(concrete.astype(np.int32))


def per_sequence_flags(values, batch_shape: tuple[int, ...], name: str) -> None:
    """Checks a boolean array with one entry per sequence, e.g. the rows to restart ``(*batch,)``."""
    _array_like(values, name)
    if values.dtype != jnp.bool_:
        raise TypeError(f"{name} must have dtype bool, got {values.dtype}" + _see("stateful-streaming"))
    if tuple(values.shape) != tuple(batch_shape):
        raise ValueError(
            f"{name} must have shape (*batch,) = {tuple(batch_shape)}, one flag per sequence, "
            f"got {tuple(values.shape)}" + _see("stateful-streaming")
        )


def per_step_flags(values, expected_shape: tuple[int, ...], name: str) -> None:
    """Checks a boolean array with one entry per step, e.g. mask or resets (*batch, time)."""
    _array_like(values, name)
    if values.dtype != jnp.bool_:
        raise TypeError(f"{name} must have dtype bool, got {values.dtype}" + _see("masks-and-resets"))
    if tuple(values.shape) != tuple(expected_shape):
        raise ValueError(
            f"{name} must have shape (*batch, time) = {tuple(expected_shape)}, one flag per step, "
            f"got {tuple(values.shape)}" + _see("masks-and-resets")
        )


def initializer(init, name: str, example: str = "jax.nn.initializers.lecun_normal()") -> None:
    """``None`` (the default initializer) or a function ``(key, shape, dtype) -> array``."""
    if init is not None and not callable(init):
        raise TypeError(
            f"{name} must be an initializer (key, shape, dtype) -> array such as {example} (or None), "
            f"got {described(init)}"
        )


def activation(fn, name: str) -> None:
    """An elementwise function: callable, and returning a floating array of its input's shape (tried,
    without computing anything, on a ``(2, 3)`` float32 input)."""
    expected = "an elementwise function such as jax.nn.sigmoid"
    if not callable(fn):
        raise TypeError(f"{name} must be {expected}, got {described(fn)}")
    try:
        out = _probe(fn)
    except TypeError:  # unhashable: probed without the cache
        out = _probe.__wrapped__(fn)
    if isinstance(out, BaseException):
        raise TypeError(
            f"{name} must be {expected}, mapping an array to one of the same shape; called on a (2, 3) float32 "
            f"array it raised {type(out).__name__}: {out}"
        ) from out
    if not hasattr(out, "shape") or tuple(out.shape) != _PROBE.shape or not jnp.issubdtype(out.dtype, jnp.floating):
        got = f"shape {tuple(out.shape)} and dtype {out.dtype}" if hasattr(out, "shape") else described(out)
        raise ValueError(
            f"{name} must be {expected}, mapping an array to a floating one of the same shape: called on a "
            f"(2, 3) float32 array it returned {got}"
        )


_PROBE = jax.ShapeDtypeStruct((2, 3), jnp.float32)


@functools.lru_cache(maxsize=64)
def _probe(fn):
    """What ``fn`` returns for ``_PROBE`` (shapes and dtypes only), or the exception it raised."""
    try:
        return jax.eval_shape(fn, _PROBE)
    except Exception as error:  # reported by activation, naming the argument
        return error
