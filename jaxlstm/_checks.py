"""The shared input validation behind jaxlstm's error messages.

Every check runs at trace time on static shapes and dtypes, so it costs
nothing inside ``jit``. Messages name the argument, the expected and the
actual value, and point to the section of ``docs/shapes.md`` that explains it.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

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
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}" + _see_for(name))
    return value


def rate(value, name: str) -> float:
    """A probability in [0, 1), e.g. a dropout rate."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(value).__name__} {value!r}" + _see_for(name))
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}" + _see_for(name))
    return float(value)


def _array_like(value, name: str):
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise TypeError(f"{name} must be a JAX or NumPy array, got {type(value).__name__}")


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


def flag(value, name: str) -> bool:
    """A bool (Python or NumPy), or a TypeError: a truthy string such as "no" must not mean True."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool (True or False), got {type(value).__name__} {value!r}")
    return bool(value)


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


def activation(fn, name: str) -> None:
    if not callable(fn):
        raise TypeError(
            f"{name} must be an elementwise function such as jax.nn.sigmoid, got {type(fn).__name__} {fn!r}"
        )
