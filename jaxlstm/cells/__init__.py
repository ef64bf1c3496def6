"""Recurrent cells for ``jaxlstm.rnn``: the protocol (``Cell``) and the cells jaxlstm ships.

See docs/cells.md for the protocol's contract and how to write a cell.
"""

from .base import Cell as Cell
from .gru import GRU as GRU
from .gru import GRUParams as GRUParams
from .lstm import LSTM as LSTM

__all__ = ["Cell", "GRU", "GRUParams", "LSTM"]
