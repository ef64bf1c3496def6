"""The cell protocol: what a recurrent cell states, and what the engine (``jaxlstm.engine``) does for it.

A cell is the elementwise math of one time step. The engine owns everything
else: time, the two matmuls ``x·W_ih`` and ``h·W_hh``, padding, masks,
resets, ``reverse``, ``checkpoint_every``, dtype promotion and the fused
gradient. Notation (docs/cells.md): N rows (the batch dims flattened), D the
input size, H the hidden size, G the cell's gate count, so both matmuls are
``G·H`` wide.

A cell's parameters are a ``NamedTuple`` with the fields ``w_ih`` ``(D, G·H)``
and ``w_hh`` ``(H, G·H)``, which the engine multiplies, and any others (biases,
norms, peepholes), which only the cell reads. ``input_bias`` may name one
``(G·H,)`` field that the engine adds to ``x·W_ih`` inside its input GEMM.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["Cell"]

Params = Any  # a NamedTuple with fields w_ih, w_hh and the cell's own
Carry = Any  # a pytree of (*batch, size) arrays


class Cell:
    """Base class of a recurrent cell for ``jaxlstm.rnn``: subclass it as a frozen dataclass.

    Required:
        num_gates: G, so ``w_ih`` is ``(D, G·H)`` and ``w_hh`` ``(H, G·H)`` (``(R, G·H)`` with ``row_weights``,
            R their output size: the LSTM's projection P).
        init_params(key, input_size, hidden_size, dtype): the parameters (a NamedTuple).
        init_carry(params, batch_shape, dtype): the zero carry, a pytree of ``(*batch, size)``.
        hidden(carry): the part of the carry that ``h·W_hh`` reads and that is the
            step's output, ``(N, H)``.
        step(params, from_input, from_h, carry): the new carry, from
            ``from_input = x·W_ih (+ params.<input_bias>)`` ``(N, G·H)``,
            ``from_h = hidden(carry)·W_hh`` ``(N, G·H)`` and the carry. Along rows only:
            row n of the result reads row n of its arguments (a row times a weight is fine).

    Optional:
        check_params(params): refuse the cell's own parameters when misshaped (the engine checks
            ``w_ih``, ``w_hh`` and the input bias).

    Optional (speed only):
        save(params, from_input, from_h, carry): what the fused backward pass keeps per
            step, a dict of ``(N, ·)`` arrays (default: the step's arguments).
        step_and_save(...): ``(step(...), save(...))`` computed once (default: both calls).
        backward(params, saved, d_carry): ``(d_params, d_from_input, d_from_h, d_carry_prev)``
            from the cotangent of the new carry (default: the VJP of ``step`` at ``saved``).
            Returning the same array as ``d_from_input`` and ``d_from_h`` (a cell that reads
            only their sum) lets the engine keep it once.
        prepare_input(params, from_input): an elementwise function of ``x·W_ih`` alone, which the
            engine applies to a chunk of steps at once (``from_input`` ``(N, t, G·H)``); ``step``
            then receives its result. A cell that defines it defines ``backward`` too, and returns
            there the cotangent of ``x·W_ih`` itself.
        row_weights: ``{field: saved key}`` for the cell's own weights that ``step`` multiplies rows
            with (``h̃·W``, with ``h̃`` saved under that key): ``backward`` returns, in that field of
            ``d_params``, the cotangent of the product ``(N, ·)``, and the engine sums
            ``h̃ᵀ·d(h̃·W)`` over chunks of rows as GEMMs. They stay in the compute dtype; the cell's
            other parameters reach it in the accumulation dtype (float32 for bfloat16 params).

    A cell with per-step random draws (the engine's ``Steps.noise``) receives them as the keyword
    ``noise`` in ``step``, ``save``, ``step_and_save`` and ``backward``; other cells never see it.

    ``params`` as ``step``, ``save`` and ``backward`` see them hold ``None`` in
    ``w_ih``, ``w_hh`` and the ``input_bias`` field: the engine owns those.
    """

    num_gates: ClassVar[int]
    input_bias: ClassVar[str | None] = None
    row_weights: ClassVar[dict[str, str]] = {}

    def init_params(self, key: PRNGKeyArray, input_size: int, hidden_size: int, dtype=None) -> Params:
        raise NotImplementedError(f"{type(self).__name__} must define init_params")

    def init_carry(self, params: Params, batch_shape: tuple[int, ...], dtype) -> Carry:
        raise NotImplementedError(f"{type(self).__name__} must define init_carry")

    def hidden(self, carry: Carry) -> Float[Array, "*batch hidden"]:
        raise NotImplementedError(f"{type(self).__name__} must define hidden")

    def step(
        self, params: Params, from_input: Float[Array, "n gates"], from_h: Float[Array, "n gates"], carry: Carry
    ) -> Carry:
        raise NotImplementedError(f"{type(self).__name__} must define step")

    def check_params(self, params: Params) -> None:
        """Optional: refuse parameters of the wrong shape beyond ``w_ih``/``w_hh`` (the engine checks those),
        with a ValueError naming the field. Called once per call, at trace time."""

    def prepare_input(self, params: Params, from_input):
        """Optional: ``x·W_ih`` as ``step`` reads it (default: itself)."""
        return from_input

    def save(self, params: Params, from_input, from_h, carry: Carry, **noise) -> dict[str, Any]:
        """What the backward pass keeps per step (default: the step's arguments)."""
        return {"from_input": from_input, "from_h": from_h, "carry": carry}

    def step_and_save(self, params: Params, from_input, from_h, carry: Carry, **noise):
        """``(new_carry, saved)``: ``step`` and ``save`` of the same arguments."""
        return (
            self.step(params, from_input, from_h, carry, **noise),
            self.save(params, from_input, from_h, carry, **noise),
        )

    def backward(self, params: Params, saved: dict[str, Any], d_carry, **noise):
        """``(d_params, d_from_input, d_from_h, d_carry_prev)``: the VJP of ``step`` at ``saved``."""
        if type(self).prepare_input is not Cell.prepare_input:
            raise TypeError(f"{type(self).__name__} defines prepare_input, so it must define backward too")

        def step(params, from_input, from_h, carry):
            return self.step(params, from_input, from_h, carry, **noise)

        _, pullback = jax.vjp(step, params, saved["from_input"], saved["from_h"], saved["carry"])
        return pullback(d_carry)
