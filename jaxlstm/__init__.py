"""jaxlstm: LSTMs for JAX — one pure cell, one scan over time, thin Flax modules.

``import jaxlstm as jl`` gives the functional core without importing Flax;
``jl.LSTM`` / ``jl.LSTMCell`` (flax.linen) and ``jl.nnx`` (flax.nnx) import
Flax when first used. ``jl.explain`` walks through every shape of an LSTM
configuration and ``jl.summary`` tabulates a Flax model's layers (see
docs/shapes.md); neither imports Flax until used.
"""

import importlib
from typing import TYPE_CHECKING

from . import _export  # noqa: F401  (registers the NamedTuples for jax.export)
from . import cells as cells
from .cell import LSTMCarry as LSTMCarry
from .cell import LSTMParams as LSTMParams
from .cell import init_params as init_params
from .cell import lstm_cell as lstm_cell
from .cell import zeros_carry as zeros_carry
from .cudnn import BackendChoice as BackendChoice
from .cudnn import backend_for as backend_for
from .cells import Cell as Cell
from .cells import GRUParams as GRUParams
from .engine import SequenceOptions as SequenceOptions
from .options import LSTMOptions as LSTMOptions
from .options import RNNStackOptions as RNNStackOptions
from .options import StackOptions as StackOptions
from .engine import rnn as rnn
from .explain import explain as explain
from .gru import gru as gru
from .gru import gru_cell as gru_cell
from .gru import init_gru_params as init_gru_params
from .rnn_stack import init_rnn_stack as init_rnn_stack
from .rnn_stack import stacked_rnn as stacked_rnn
from .scan import lstm as lstm
from .scan import lstm_variant as lstm_variant
from .scan import lstm_variant_cell as lstm_variant_cell
from .stack import MERGE_MODES as MERGE_MODES
from .stack import StackCarry as StackCarry
from .stack import StackParams as StackParams
from .stack import init_stack as init_stack
from .stack import last_output as last_output
from .stack import merge_directions as merge_directions
from .stack import stacked_lstm as stacked_lstm
from .summary import summary as summary
from .variants import LSTMVariant as LSTMVariant
from .variants import VariantParams as VariantParams
from .variants import init_variant_params as init_variant_params

__version__ = "0.1.0"

# Names whose modules import Flax (or an optional package): loaded on first use.
_LAZY = {"LSTM": "linen", "LSTMCell": "linen", "GRU": "gru_linen", "GRUCell": "gru_linen", "nnx": None, "interop": None}

if TYPE_CHECKING:  # the same names as _LAZY, spelled out for type checkers (tests/test_packaging.py checks)
    from . import interop as interop
    from . import nnx as nnx
    from .linen import LSTM as LSTM
    from .gru_linen import GRU as GRU
    from .gru_linen import GRUCell as GRUCell
    from .linen import LSTMCell as LSTMCell


def __getattr__(name: str):
    if name in _LAZY:
        if _LAZY[name] is None:
            return importlib.import_module(f".{name}", __name__)
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'jaxlstm' has no attribute {name!r}")


__all__ = [
    "LSTMCarry",
    "LSTMParams",
    "init_params",
    "zeros_carry",
    "lstm_cell",
    "lstm",
    "backend_for",
    "BackendChoice",
    "MERGE_MODES",
    "StackCarry",
    "StackParams",
    "init_stack",
    "last_output",
    "merge_directions",
    "stacked_lstm",
    "LSTMVariant",
    "VariantParams",
    "init_variant_params",
    "lstm_variant",
    "lstm_variant_cell",
    "explain",
    "summary",
    "Cell",
    "cells",
    "rnn",
    "SequenceOptions",
    "LSTMOptions",
    "StackOptions",
    "RNNStackOptions",
    "GRUParams",
    "gru",
    "gru_cell",
    "init_gru_params",
    "init_rnn_stack",
    "stacked_rnn",
    "LSTM",
    "LSTMCell",
    "GRU",
    "GRUCell",
    "nnx",
    "interop",
]
