"""The elementwise part of one LSTM step, for every cell the engine runs.

The engine (``jaxlstm.loops``, running ``jaxlstm.cells.LSTM``) owns time and the matmuls: x·W_ih (over chunks
of steps), h·W_hh (every step) and, under a projection, h̃·W_hr (every step).
Between them a cell computes elementwise math only. This module holds that
math, one object per kind of cell, each with the same three methods::

    forward(small, z, c, zone_c)  -> (h̃, c', residuals)
    backward(small, residuals, c, zone_c, dh̃, dc') -> (dz, dc, d_small)
    small_params(params)          -> the elementwise parameters it reads

``z`` is what the engine's matmuls produced for one step: the summed
pre-activation ``x·W_ih + h·W_hh + b`` ``(N, 4H)``, or, for a cell whose
``separate`` is set (layer norm normalizes the two apart), the pair
``(normalize_input(x·W_ih), h·W_hh)`` with ``b`` among the small parameters.
``h̃`` ``(N, H)`` is the cell's output before any projection, ``c`` and ``c'`` the cell state
before and after the step. ``residuals`` is what the fused backward pass
keeps per step (each array saved as its own ``(N, T, ·)`` buffer); the
backward pass then returns the gradients of ``z`` (same structure), of ``c``
and of the small parameters.

* ``PlainPointwise``: the plain LSTM. It saves the activated gates and has a
  hand-written backward pass (sigmoid and tanh only).
* ``VariantPointwise``: every member of the LSTM family (``LSTMVariant``).
  It saves its pre-activations and takes the VJP of its own forward
  function, so any option, and any elementwise ``gate_fn``/``activation_fn``,
  gets the fused gradient without a second hand-written derivative.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import jax
import jax.numpy as jnp
from jaxtyping import Array

from .cell import Activation, activate_gates, update
from .variants import LSTMVariant, VariantParams

__all__ = ["PlainPointwise", "VariantPointwise", "pointwise_for", "plain_bias"]


def _row(vector, like):
    """A (n,) parameter as (1, …, 1, n), to meet ``like`` (*batch, n) without rank promotion."""
    return jnp.expand_dims(vector.astype(like.dtype), tuple(range(like.ndim - 1)))


# Rows whose largest magnitude reaches 2**_LN_SAFE_EXPONENT are scaled down by a power of two
# before their statistics are taken, so that the sums and squares of inputs up to the float32
# limit do not overflow; smaller rows (all ordinary data) are not scaled at all.
_LN_SAFE_EXPONENT = 50


def normalize(a, epsilon: float, *, any_magnitude: bool = True):
    """``(â, 1/σ)``: â = (a − mean(a)) / σ with σ = sqrt(var(a) + ε), over the last axis.

    With ``any_magnitude`` it is finite for any finite ``a``, up to the float32
    limit: a row whose largest magnitude is 2**50 or more is first multiplied by a
    power of two 2**-k (exact, it changes no rounding), its statistics taken there,
    and ε scaled by 2**-2k to match, which is the same math. Without it (one
    reduction fewer) the squares must not overflow: rows below ~1e19, as
    ``h·W_hh`` (|h| <= 1) and the cell state are. ``1/σ`` is ``(*batch, 1)``.
    """
    scale = None
    if any_magnitude:
        largest = jnp.max(jnp.abs(a), axis=-1, keepdims=True)
        _, exponent = jnp.frexp(largest)  # largest = m · 2**exponent, 0.5 <= m < 1
        k = jnp.clip(exponent - _LN_SAFE_EXPONENT, 0, 126 - _LN_SAFE_EXPONENT).astype(jnp.int32)
        scale = jax.lax.bitcast_convert_type((127 - k) << 23, jnp.float32).astype(a.dtype)  # 2**-k, exact
        a = a * scale
    mean = jnp.mean(a, axis=-1, keepdims=True)
    centered = a - mean
    variance = jnp.mean(centered * centered, axis=-1, keepdims=True)
    if scale is None:
        inv_sigma = jax.lax.rsqrt(variance + epsilon)
        return centered * inv_sigma, inv_sigma
    inv_scaled = jax.lax.rsqrt(variance + (epsilon * scale) * scale)
    return centered * inv_scaled, inv_scaled * scale


def normalize_backward(d_normalized, normalized, inv_sigma):
    """The gradient of ``a`` from that of â = ``normalize(a)[0]``, given â and 1/σ:
    (1/σ)·(dâ − mean(dâ) − â·mean(dâ·â)), the mean and the variance differentiated too."""
    mean_d = jnp.mean(d_normalized, axis=-1, keepdims=True)
    mean_dn = jnp.mean(d_normalized * normalized, axis=-1, keepdims=True)
    return inv_sigma * (d_normalized - mean_d - normalized * mean_dn)


@jax.custom_vjp
def _normalized_as_saved(a, normalized, inv_sigma):
    """``normalized`` (saved by the forward pass for this ``a``), differentiated as ``normalize(a)[0]``."""
    return normalized


def _normalized_as_saved_forward(a, normalized, inv_sigma):
    return normalized, (normalized, inv_sigma)


def _normalized_as_saved_backward(saved, d_normalized):
    normalized, inv_sigma = saved
    d_a = normalize_backward(d_normalized, normalized, inv_sigma)
    return d_a, jnp.zeros_like(normalized), jnp.zeros_like(inv_sigma)


_normalized_as_saved.defvjp(_normalized_as_saved_forward, _normalized_as_saved_backward)


@dataclass(frozen=True)
class PlainPointwise:
    """The plain LSTM's elementwise step: i, f, g, o from z, then c' = f·c + i·g, h̃ = o·tanh(c')."""

    gate_fn: Activation = jax.nn.sigmoid
    activation_fn: Activation = jnp.tanh
    separate = False

    @property
    def fusable(self) -> bool:
        """Whether ``backward`` applies: it is written for sigmoid and tanh."""
        return self.gate_fn is jax.nn.sigmoid and self.activation_fn is jnp.tanh

    def small_params(self, params) -> None:
        return None

    def forward(self, small, z, c, zone_c=None):
        gates_t = activate_gates(z, self.gate_fn, self.activation_fn)
        new = update(gates_t, c, self.activation_fn)
        return new.h, new.c, tuple(jnp.split(gates_t, 4, axis=-1))

    def backward(self, small, residuals, c_prev, zone_c, dh, dc):
        """The hand-written derivative of ``forward`` (sigmoid and tanh), from the saved gates."""
        i, f, g, o = residuals
        tanh_c = jnp.tanh(f * c_prev + i * g)
        dc_total = dc + dh * o * (1.0 - tanh_c * tanh_c)
        dz = jnp.concatenate(
            [
                dc_total * g * i * (1.0 - i),
                dc_total * c_prev * f * (1.0 - f),
                dc_total * i * (1.0 - g * g),
                dh * tanh_c * o * (1.0 - o),
            ],
            axis=-1,
        )
        return dz, dc_total * f, None


@dataclass(frozen=True)
class VariantPointwise:
    """The elementwise step of an ``LSTMVariant`` cell (every option but the projection's matmul).

    ``training`` selects how zoneout of ``c`` acts: with ``zone_c`` flags per
    unit (training) or as its expectation (deterministic).
    """

    variant: LSTMVariant
    gate_fn: Activation = jax.nn.sigmoid
    activation_fn: Activation = jnp.tanh
    training: bool = False

    fusable = True

    @property
    def separate(self) -> bool:
        return self.variant.layer_norm

    def small_params(self, params: VariantParams) -> VariantParams:
        """The parameters read here: peepholes, layer-norm gains, and ``b`` under layer norm."""
        return params._replace(w_ih=None, w_hh=None, w_hr=None, b=params.b if self.separate else None)

    def step(self, small: VariantParams, z, c, zone_c=None):
        """``(h̃, c')`` of a cell without layer norm: its output before any projection, and its new
        state (after zoneout), from the summed pre-activation ``z``. Layer norm's step is
        ``forward``, which keeps its statistics for the backward pass."""
        return self._core(small, z, c, zone_c, None)

    def _combine(self, small: VariantParams, normalized_input, normalized_h):
        """Layer norm's pre-activation from the two normalized matmul outputs: gains, then ``b``."""
        return (
            normalized_input * _row(small.ln_ih_scale, normalized_input)
            + normalized_h * _row(small.ln_hh_scale, normalized_h)
            + _row(small.b, normalized_input)
        )

    def _core(self, small: VariantParams, z, c, zone_c, normalize_c: Callable[[Array], Array] | None):
        """The step from its pre-activation ``z`` (N, 4H); ``normalize_c`` gives LN(c') (layer norm only)."""
        variant, gate_fn, activation_fn = self.variant, self.gate_fn, self.activation_fn
        z_i, z_f, z_g, z_o = jnp.split(z, 4, axis=-1)
        if variant.peepholes:
            w_peep = cast(Array, small.w_peep)  # peepholes: check_params requires w_peep
            p_i, p_f, p_o = w_peep[0], w_peep[1], w_peep[2]
            c_in = c.astype(z.dtype)
            z_i = z_i + _row(p_i, z_i) * c_in
            z_f = z_f + _row(p_f, z_f) * c_in
        i, g = gate_fn(z_i), activation_fn(z_g)
        f = 1.0 - i if variant.cifg else gate_fn(z_f + variant.forget_bias if variant.forget_bias else z_f)
        c_new = f.astype(c.dtype) * c + i.astype(c.dtype) * g.astype(c.dtype)
        if variant.cell_clip is not None:
            c_new = jnp.clip(c_new, -variant.cell_clip, variant.cell_clip)
        if variant.peepholes:
            z_o = z_o + _row(p_o, z_o) * c_new.astype(z.dtype)
        o = gate_fn(z_o)
        c_out = c_new
        if variant.layer_norm:
            normalized_c = cast(Callable[[Array], Array], normalize_c)(c_new)  # layer norm: always given
            c_out = normalized_c * _row(small.ln_c_scale, c_new) + _row(small.ln_c_bias, c_new)
        h = (o.astype(c.dtype) * activation_fn(c_out)).astype(z.dtype)
        if variant.zoneout_c > 0.0:
            if self.training:
                c_new = jnp.where(zone_c, c, c_new)
            else:
                c_new = variant.zoneout_c * c + (1.0 - variant.zoneout_c) * c_new
        return h, c_new

    def normalize_input(self, from_input):
        """``(â, 1/σ)`` of the input side ``x·W_ih`` ``(..., 4H)`` under layer norm, for any
        magnitude (xs may reach the float32 limit). It doesn't depend on the recurrence, so the
        fused loop normalizes a whole chunk of steps at once, and ``forward`` reads the result."""
        return normalize(from_input, self.variant.layer_norm_epsilon)

    def forward(self, small, z, c, zone_c=None):
        """``(h̃, c', residuals)``; under layer norm ``z`` is ``(normalize_input(x·W_ih), h·W_hh)``."""
        if not self.separate:
            h, c_new = self.step(small, z, c, zone_c)
            return h, c_new, tuple(jnp.split(z, 4, axis=-1))
        # Layer norm: the statistics are taken here once; the backward pass reads the normalized
        # values and 1/σ back instead of normalizing again. They are saved whole, (N, 4H), since
        # that pass reads them whole (in four pieces they cost four reads and a concatenation).
        # The input side arrives normalized (``normalize_input``).
        epsilon = self.variant.layer_norm_epsilon
        (normalized_input, inv_input), from_h = z
        # |h| <= 1 bounds h·W_hh: its squares can't overflow.
        normalized_h, inv_h = normalize(from_h, epsilon, any_magnitude=False)
        saved_c = []

        def normalize_c(c_new):
            normalized_c, inv_c = normalize(c_new, epsilon, any_magnitude=False)
            saved_c.extend((normalized_c, inv_c))
            return normalized_c

        h, c_new = self._core(small, self._combine(small, normalized_input, normalized_h), c, zone_c, normalize_c)
        return h, c_new, (normalized_input, normalized_h, inv_input, inv_h, *saved_c)

    def backward(self, small, residuals, c_prev, zone_c, dh, dc):
        """The VJP of ``step`` at the saved residuals: pre-activations, or under layer norm the
        normalized values and 1/σ (the normalizations' own derivative then written out)."""
        if not self.separate:
            z = jnp.concatenate(residuals, axis=-1)
            _, pullback = jax.vjp(lambda small, z, c: self.step(small, z, c, zone_c), small, z, c_prev)
            d_small, dz, dc_prev = pullback((dh, dc))
            return dz, dc_prev, d_small
        normalized_input, normalized_h, inv_input, inv_h, normalized_c, inv_c = residuals

        def from_normalized(small, normalized_input, normalized_h, c):
            pre = self._combine(small, normalized_input, normalized_h)
            return self._core(small, pre, c, zone_c, lambda c_new: _normalized_as_saved(c_new, normalized_c, inv_c))

        _, pullback = jax.vjp(from_normalized, small, normalized_input, normalized_h, c_prev)
        d_small, d_input, d_h, dc_prev = pullback((dh, dc))
        dz = (normalize_backward(d_input, normalized_input, inv_input), normalize_backward(d_h, normalized_h, inv_h))
        return dz, dc_prev, d_small


def pointwise_for(variant: LSTMVariant | None, gate_fn, activation_fn, training: bool):
    """The elementwise step of a cell.

    The plain one unless an option changes the step's own math (peepholes,
    layer norm, cifg, cell clipping, zoneout of ``c``): the projection, zoneout
    of ``h``, recurrent and input dropout act outside it, in the engine, and a
    forget bias is folded into ``b`` (``plain_bias``).
    """
    if variant is None or not _changes_step(variant):
        return PlainPointwise(gate_fn, activation_fn)
    return VariantPointwise(variant, gate_fn, activation_fn, training)


def _changes_step(variant: LSTMVariant) -> bool:
    return (
        variant.peepholes
        or variant.layer_norm
        or variant.cifg
        or variant.cell_clip is not None
        or variant.zoneout_c > 0.0
    )


def plain_bias(b, variant: LSTMVariant | None):
    """``b`` with the variant's forget bias added to the forget gate's entries, for the plain step."""
    if variant is None or not variant.forget_bias:
        return b
    hidden = b.shape[-1] // 4
    return b.at[hidden : 2 * hidden].add(variant.forget_bias)
