"""The elementwise part of one LSTM step, for every cell the engine runs.

The engine (``jaxlstm.scan``) owns time and the matmuls: x·W_ih (over chunks
of steps), h·W_hh (every step) and, under a projection, h̃·W_hr (every step).
Between them a cell computes elementwise math only. This module holds that
math, one object per kind of cell, each with the same three methods::

    forward(small, z, c, zone_c)  -> (h̃, c', residuals)
    backward(small, residuals, c, zone_c, dh̃, dc') -> (dz, dc, d_small)
    small_params(params)          -> the elementwise parameters it reads

``z`` is what the engine's matmuls produced for one step: the summed
pre-activation ``x·W_ih + h·W_hh + b`` ``(N, 4H)``, or, for a cell whose
``separate`` is set (layer norm normalizes the two apart), the pair
``(x·W_ih, h·W_hh)`` with ``b`` among the small parameters. ``h̃`` ``(N, H)``
is the cell's output before any projection, ``c`` and ``c'`` the cell state
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

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from .cell import Activation, activate_gates, update
from .variants import LSTMVariant, VariantParams

__all__ = ["PlainPointwise", "VariantPointwise", "pointwise_for", "plain_bias"]


def _row(vector, like):
    """A (n,) parameter as (1, …, 1, n), to meet ``like`` (*batch, n) without rank promotion."""
    return jnp.expand_dims(vector.astype(like.dtype), tuple(range(like.ndim - 1)))


def layer_norm(a, epsilon: float):
    """(a − mean(a)) / sqrt(var(a) + ε) over the last axis."""
    mean = jnp.mean(a, axis=-1, keepdims=True)
    centered = a - mean
    variance = jnp.mean(centered * centered, axis=-1, keepdims=True)
    return centered * jax.lax.rsqrt(variance + epsilon)


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

    def _pre_activation(self, small: VariantParams, z):
        if not self.separate:
            return z
        from_input, from_h = z
        epsilon = self.variant.layer_norm_epsilon
        from_input = layer_norm(from_input, epsilon) * _row(small.ln_ih_scale, from_input)
        from_h = layer_norm(from_h, epsilon) * _row(small.ln_hh_scale, from_h)
        return from_input + from_h + _row(small.b, from_input)

    def step(self, small: VariantParams, z, c, zone_c=None):
        """``(h̃, c')``: the cell's output before any projection, and its new state (after zoneout)."""
        variant, gate_fn, activation_fn = self.variant, self.gate_fn, self.activation_fn
        z = self._pre_activation(small, z)
        z_i, z_f, z_g, z_o = jnp.split(z, 4, axis=-1)
        if variant.peepholes:
            p_i, p_f, p_o = small.w_peep[0], small.w_peep[1], small.w_peep[2]
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
            epsilon = variant.layer_norm_epsilon
            c_out = layer_norm(c_new, epsilon) * _row(small.ln_c_scale, c_new) + _row(small.ln_c_bias, c_new)
        h = (o.astype(c.dtype) * activation_fn(c_out)).astype(z.dtype)
        if variant.zoneout_c > 0.0:
            if self.training:
                c_new = jnp.where(zone_c, c, c_new)
            else:
                c_new = variant.zoneout_c * c + (1.0 - variant.zoneout_c) * c_new
        return h, c_new

    def forward(self, small, z, c, zone_c=None):
        h, c_new = self.step(small, z, c, zone_c)
        parts = z if self.separate else (z,)
        return h, c_new, tuple(piece for part in parts for piece in jnp.split(part, 4, axis=-1))

    def backward(self, small, residuals, c_prev, zone_c, dh, dc):
        """The VJP of ``step`` at the saved pre-activations."""
        if self.separate:
            z = (jnp.concatenate(residuals[:4], axis=-1), jnp.concatenate(residuals[4:], axis=-1))
        else:
            z = jnp.concatenate(residuals, axis=-1)
        _, pullback = jax.vjp(lambda small, z, c: self.step(small, z, c, zone_c), small, z, c_prev)
        d_small, dz, dc_prev = pullback((dh, dc))
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
