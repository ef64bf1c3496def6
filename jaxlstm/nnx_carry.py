"""``jaxlstm.nnx.Carry``: the variable type of the carry a ``stateful=True`` NNX layer keeps, one class
for every cell (``jl.nnx.LSTM`` and ``jl.nnx.GRU``), so ``nnx.state(model, jl.nnx.Carry)`` finds them all."""

from __future__ import annotations

from flax import nnx

__all__ = ["Carry"]


class Carry(nnx.Variable):
    """The carry a ``stateful=True`` layer keeps between calls, nested ``[layer][direction]`` → the cell's
    carry (``LSTMCarry`` of ``(*batch, R)`` and ``(*batch, H)`` for an LSTM, ``h`` ``(*batch, H)`` for a GRU);
    ``None`` before the first call (or after ``reset_carry(batch_shape)``). ``model.carry[...]`` reads it
    whole, as a parameter's ``[...]`` does."""

    def __getitem__(self, key):
        if key is Ellipsis:
            return self.get_value()
        return super().__getitem__(key)
