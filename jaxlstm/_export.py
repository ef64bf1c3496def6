"""Registers the public NamedTuples for ``jax.export`` serialization, so an exported function whose
inputs or outputs hold them (``LSTMParams``, ``LSTMCarry``, ``GRUParams``, ...) serializes."""

from __future__ import annotations

import jax

from ._types import LSTMCarry, LSTMParams
from .cells.gru import GRUParams
from .variants import VariantParams

for _type in (LSTMParams, LSTMCarry, VariantParams, GRUParams):
    try:
        jax.export.register_namedtuple_serialization(_type, serialized_name=f"jaxlstm.{_type.__name__}")
    except ValueError:  # already registered (a module reloaded)
        pass
