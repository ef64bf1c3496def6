"""The cell's two pytrees, ``LSTMParams`` and ``LSTMCarry``: plain NamedTuples of arrays.

They live apart from ``jaxlstm.cell`` so that ``jaxlstm._checks``, which the
cell uses to validate its inputs, can check for them without importing the
cell (no import cycle). Import them from ``jaxlstm`` or ``jaxlstm.cell``; the
notation (D, H, gates = 4H) is ``jaxlstm.cell``'s.
"""

from __future__ import annotations

from typing import NamedTuple

from jaxtyping import Array, Float

__all__ = ["LSTMParams", "LSTMCarry"]


class LSTMParams(NamedTuple):
    """The weights of one LSTM cell (one layer, one direction).

    Attributes:
        w_ih: input kernel, shape ``(input_size, 4 * hidden_size)``.
        w_hh: recurrent kernel, shape ``(hidden_size, 4 * hidden_size)``.
        b: bias, shape ``(4 * hidden_size,)``.

    The 4H axis holds the gates in the order input, forget, cell candidate
    (g), output. A pytree, so it passes through ``jit``, ``grad`` and optax.
    """

    w_ih: Float[Array, "input gates"]
    w_hh: Float[Array, "hidden gates"]
    b: Float[Array, " gates"]

    @property
    def input_size(self) -> int:
        """D, the size of one step's input vector."""
        return self.w_ih.shape[-2]

    @property
    def hidden_size(self) -> int:
        """H, the size of the state vector (``units``, ``features``)."""
        return self.w_hh.shape[-2]

    @property
    def recurrent_size(self) -> int:
        """R, the size of ``h``: H, as a plain cell has no projection (``VariantParams.recurrent_size`` may be P)."""
        return self.w_hh.shape[-2]


class LSTMCarry(NamedTuple):
    """The state an LSTM carries from one time step to the next.

    Attributes:
        h: hidden state (the step's output), shape ``(*batch, hidden_size)``.
        c: cell state, shape ``(*batch, hidden_size)``.
    """

    h: Float[Array, "*batch hidden"]
    c: Float[Array, "*batch hidden"]
