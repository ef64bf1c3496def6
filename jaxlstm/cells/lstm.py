"""The LSTM family as a cell of the protocol: what ``jaxlstm.lstm``, its stacks and modules run.

One cell for the plain LSTM and every ``LSTMVariant``: the elementwise step is ``jaxlstm.pointwise``'s
(the plain cell's hand-written derivative, or a variant's VJP); around it this cell adds what the
LSTM family has beyond an elementwise step:

* a projection ``h = h̃·W_hr`` (``proj_size``): a row weight (``Cell.row_weights``), so the engine sums
  ``dW_hr = Σ h̃ᵀ·dh`` over chunks of rows as GEMMs;
* zoneout of ``h`` (and, in the elementwise step, of ``c``): while training, per-step flags that the
  engine hands over as ``noise = (zone_h, zone_c)``; else its expectation;
* layer norm's input side, normalized a chunk of steps at a time (``prepare_input``).

Shapes: ``x·W_ih`` and ``h·W_hh`` ``(N, 4H)``; the carry ``LSTMCarry(h (N, R), c (N, H))``, R = P with a
projection, else H.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from ..cell import Activation, LSTMCarry, init_params, state_dtype
from ..pointwise import PlainPointwise, VariantPointwise, pointwise_for
from ..precision import as_dtype, matmul
from ..variants import LSTMVariant, VariantParams, check_params, init_variant_params
from .base import Cell

__all__ = ["LSTM"]


@dataclass(frozen=True)
class LSTM(Cell):
    """The LSTM (and with ``variant`` any member of its family) as a ``jaxlstm.Cell``.

    Attributes:
        variant: a ``jaxlstm.LSTMVariant``, or ``None`` for the plain LSTM.
        gate_fn, activation_fn: the gates' (σ) and the candidate's and cell output's (tanh) activations.
        training: zoneout acts through the per-step flags of ``noise`` (else as its expectation).

    Its parameters are ``VariantParams`` (``w_ih`` ``(D, 4H)``, ``w_hh`` ``(R, 4H)``, ``b`` ``(4H,)`` and the
    variant's own), its carry ``LSTMCarry``. ``jaxlstm.lstm(params, xs, variant=v)`` runs
    ``jaxlstm.rnn(LSTM(v), params, xs)`` after its own checks, draws and backend choice.
    """

    variant: LSTMVariant | None = None
    gate_fn: Activation = jax.nn.sigmoid
    activation_fn: Activation = jnp.tanh
    training: bool = False

    num_gates = 4

    @property
    def pointwise(self) -> PlainPointwise | VariantPointwise:
        return pointwise_for(self.variant, self.gate_fn, self.activation_fn, self.training)

    @property
    def zoneout_h(self) -> float:
        return 0.0 if self.variant is None else self.variant.zoneout_h

    @property
    def input_bias(self) -> str | None:  # type: ignore[override]  # layer norm adds b after normalizing
        return None if self.pointwise.separate else "b"

    @property
    def row_weights(self) -> dict[str, str]:  # type: ignore[override]
        return {} if self.variant is None or self.variant.proj_size is None else {"w_hr": "h_cell"}

    def init_params(self, key, input_size: int, hidden_size: int, dtype=jnp.float32) -> VariantParams:
        if self.variant is None:
            return VariantParams(*init_params(key, input_size, hidden_size, dtype=dtype))
        return init_variant_params(key, input_size, hidden_size, self.variant, dtype=dtype)

    def check_params(self, params) -> None:
        """``params`` a ``VariantParams`` with exactly the arrays the variant uses, shaped as ``jaxlstm.lstm``
        checks them (``jaxlstm.variants.check_params``): ``w_hr`` ``(H, P)`` under a projection."""
        if not isinstance(params, VariantParams):
            raise TypeError(
                f"params must be a jaxlstm.VariantParams for jaxlstm.cells.LSTM (jaxlstm.VariantParams(*lstm_params) "
                f"for the plain LSTM's), got {type(params).__name__}"
            )
        check_params(params, self.variant or LSTMVariant(), "params")

    def init_carry(self, params, batch_shape: tuple[int, ...], dtype) -> LSTMCarry:
        recurrent, hidden = params.w_hh.shape[0], params.w_hh.shape[1] // 4
        return LSTMCarry(
            jnp.zeros((*batch_shape, recurrent), dtype), jnp.zeros((*batch_shape, hidden), state_dtype(dtype))
        )

    def hidden(self, carry: LSTMCarry):
        return carry.h

    def prepare_input(self, params, from_input):
        """Layer norm's input side ``(â, 1/σ)`` of ``x·W_ih`` (a chunk of steps at once); else ``x·W_ih``."""
        pointwise = self.pointwise
        if isinstance(pointwise, VariantPointwise) and pointwise.separate:
            return pointwise.normalize_input(from_input)
        return from_input

    def _forward(self, params, from_input, from_h, carry: LSTMCarry, noise):
        zone_h, zone_c = (None, None) if noise is None else noise
        pointwise = self.pointwise
        z = (from_input, from_h) if pointwise.separate else from_input + from_h
        h_cell, c_new, residuals = pointwise.forward(pointwise.small_params(params), z, carry.c, zone_c)
        h_new = h_cell if params.w_hr is None else matmul(h_cell, params.w_hr, params.w_hr.dtype)
        h_new = as_dtype(self._zoneout_h(carry.h, h_new, zone_h), carry.h.dtype)
        return LSTMCarry(h_new, c_new), residuals, h_cell

    def _zoneout_h(self, previous, new, zone_h):
        """``h`` after zoneout: units flagged in ``zone_h`` keep ``previous`` (training), else the expectation."""
        rate = self.zoneout_h
        if rate == 0.0:
            return new
        previous = as_dtype(previous, new.dtype)
        if zone_h is not None:
            return jnp.where(zone_h, previous, new)
        return rate * previous + (1.0 - rate) * new

    def step(self, params, from_input, from_h, carry: LSTMCarry, noise=None) -> LSTMCarry:
        return self._forward(params, from_input, from_h, carry, noise)[0]

    def step_and_save(self, params, from_input, from_h, carry: LSTMCarry, noise=None):
        new, residuals, h_cell = self._forward(params, from_input, from_h, carry, noise)
        saved: dict[str, Any] = {"gates": residuals, "prev_c": carry.c}
        if params.w_hr is not None:
            saved["h_cell"] = h_cell
        return new, saved

    def save(self, params, from_input, from_h, carry: LSTMCarry, noise=None):
        return self.step_and_save(params, from_input, from_h, carry, noise)[1]

    def backward(self, params, saved, d_carry: LSTMCarry, noise=None):
        """The cell's derivative: zoneout of ``h``, the projection, then the elementwise step's own
        (``pointwise.backward``, hand-written or its VJP). ``d from_input`` and ``d from_h`` are one
        array (the gates read their sum) but under layer norm, which normalizes them apart."""
        zone_h, zone_c = (None, None) if noise is None else noise
        pointwise = self.pointwise
        dh_new, dh_kept = self._zoneout_h_backward(d_carry.h, zone_h)
        dh_cell = dh_new if params.w_hr is None else matmul(dh_new, params.w_hr.T, params.w_hr.dtype)
        dz, dc_prev, d_small = pointwise.backward(
            pointwise.small_params(params), saved["gates"], saved["prev_c"], zone_c, dh_cell, d_carry.c
        )
        d_params = jax.tree.map(lambda _: None, params) if d_small is None else d_small
        if params.w_hr is not None:
            d_params = d_params._replace(w_hr=dh_new)
        dz_input, dz_h = dz if pointwise.separate else (dz, dz)
        return d_params, dz_input, dz_h, LSTMCarry(jnp.zeros_like(dh_new) if dh_kept is None else dh_kept, dc_prev)

    def _zoneout_h_backward(self, dh, zone_h):
        """``(d new h, d previous h)`` through ``_zoneout_h``; the second is ``None`` without zoneout."""
        rate = self.zoneout_h
        if rate == 0.0:
            return dh, None
        if zone_h is not None:
            zeros = jnp.zeros_like(dh)
            return jnp.where(zone_h, zeros, dh), jnp.where(zone_h, dh, zeros)
        return (1.0 - rate) * dh, rate * dh
