"""What every NNX layer shares (``jl.nnx.LSTM`` and ``jl.nnx.GRU``), written once:

* ``Carry`` (``jaxlstm.nnx.Carry``): the variable type of the carry a ``stateful=True`` layer keeps, one
  class for every cell, so ``nnx.state(model, jl.nnx.Carry)`` finds them all; ``reset_kept_carry``;
* the rngs rules: ``check_rngs`` (the constructors' ``rngs``), ``dropout_stream`` (the stream a layer
  keeps for its masks) and ``call_dropout_key`` (a call's key: its ``rngs``, else the layer's stream).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from . import _checks
from .layer import check_stateful_carry

__all__ = ["Carry", "reset_kept_carry", "check_rngs", "dropout_stream", "call_dropout_key"]


class Carry(nnx.Variable):
    """The carry a ``stateful=True`` layer keeps between calls, nested ``[layer][direction]`` → the cell's
    carry (``LSTMCarry`` of ``(*batch, R)`` and ``(*batch, H)`` for an LSTM, ``h`` ``(*batch, H)`` for a GRU);
    ``None`` before the first call (or after ``reset_carry(batch_shape)``). ``model.carry[...]`` reads it
    whole, as a parameter's ``[...]`` does."""

    def __getitem__(self, key):
        if key is Ellipsis:
            return self.get_value()
        return super().__getitem__(key)


def reset_kept_carry(module: nnx.Module, stateful: bool, batch_shape, rows, fresh: Callable[[tuple[int, ...]], Any]):
    """``reset_carry`` of a stateful NNX layer, any cell: forget ``module.carry`` (both ``None``), or put
    ``fresh(batch_shape)`` (the initial carries ``[layer][direction]``, ``(*batch, ·)`` leaves) in place, in
    the rows flagged by ``rows`` ``(*batch,)`` only when given (``batch_shape`` then defaults to the kept
    carry's). A layer that isn't stateful, or ``rows`` with no carry and no ``batch_shape``, is a ValueError."""
    if not stateful:
        raise ValueError(
            "reset_carry is for a stateful=True layer; this one keeps no carry between calls"
            + _checks._see("stateful-streaming")
        )
    carry: Carry = getattr(module, "carry")  # noqa: B009  (set by a stateful layer's __init__)
    if batch_shape is None and rows is None:
        carry.set_value(None)
        return
    stored = carry.get_value()
    if batch_shape is None:
        if stored is None:
            raise ValueError("reset_carry(rows=...) with no carry kept yet needs batch_shape, the rows' shape")
        batch_shape = tuple(jax.tree.leaves(stored[0][0])[0].shape[:-1])
    batch_shape = _checks.batch_shape(batch_shape)
    new = fresh(batch_shape)
    if rows is not None:
        _checks.per_sequence_flags(rows, batch_shape, "rows")
        if stored is not None:
            check_stateful_carry(stored, batch_shape)
            restart = rows[..., None]
            new = jax.tree.map(lambda kept_new, old: jnp.where(restart, kept_new.astype(old.dtype), old), new, stored)
    carry.set_value(new)


# ----------------------------------------------------------------------------- rngs


def check_rngs(rngs) -> None:
    """The constructors' ``rngs``: an ``nnx.Rngs`` (required, as in Flax's own NNX layers)."""
    if not isinstance(rngs, nnx.Rngs):
        hint = f"; for a seed, pass nnx.Rngs({rngs!r})" if isinstance(rngs, int) and not isinstance(rngs, bool) else ""
        raise TypeError(f"rngs must be an nnx.Rngs, e.g. nnx.Rngs(0), got {type(rngs).__name__}{hint}")


def _has_dropout_stream(rngs: nnx.Rngs) -> bool:
    return "dropout" in rngs or "default" in rngs


def dropout_stream(rngs: nnx.Rngs, may_draw: bool):
    """The stream a layer keeps for its masks (``nnx.data``): a fork of ``rngs``' ``'dropout'`` stream (else
    ``'default'``) when the layer ``may_draw`` masks and ``rngs`` has one, else ``None``."""
    return nnx.data(rngs["dropout"].fork() if may_draw and _has_dropout_stream(rngs) else None)


def call_dropout_key(rngs: nnx.Rngs | jax.Array | None, own) -> jax.Array | None:
    """A call's key: from its ``rngs`` (an ``nnx.Rngs`` or a key), else from the layer's own stream ``own``
    (``dropout_stream``'s); ``None`` if neither has one."""
    if isinstance(rngs, nnx.Rngs):
        return rngs.dropout() if _has_dropout_stream(rngs) else None
    if rngs is not None:
        return _checks.prng_key(rngs, "rngs", see=" (or an nnx.Rngs with a 'dropout' stream)")
    return None if own is None else own()
