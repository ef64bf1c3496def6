"""The loop over time: ``lstm`` applies the one cell to every step of a sequence.

One ``jax.lax.scan`` owns time. Everything that varies per step — whether a
step counts (``seq_lengths`` and ``mask``) and where a new segment starts
(``resets``) — reaches that loop as a per-step boolean array, so each feature
is data for the same loop rather than a special case of it. ``reverse`` runs
the same loop from the last step to the first over the same arrays: outputs
stay aligned with the inputs, and steps that don't count (padding) leave the
carry untouched, so each sequence is read from its own last valid step
without flipping anything.

Two ways to differentiate the loop:

* ``gradient="fused"`` (default): a ``jax.custom_vjp`` over the whole
  sequence. The forward scan saves the gate activations; the backward scan
  carries only the sequential (dh, dc) recurrence and emits the gate
  pre-activation gradients dz (*batch, T, 4H); dW_ih = Xᵀ·dz, dW_hh = H_prevᵀ·dz,
  db = Σ dz and dX = dz·W_ihᵀ then follow as single large matmuls. Both of its
  loops read and write batch-first arrays in place, step by step, so no
  time-major copy of the inputs, outputs or gradients is made.
* ``gradient="autodiff"``: JAX differentiates the scan itself; the reference
  the fused path is tested against.

Both compute the same forward values (up to the order of float additions: the fused path
projects the inputs of several steps with one GEMM).

Every matmul of both paths goes through ``jaxlstm.precision.matmul``: with bfloat16 or float16
params and inputs, its operands are in that dtype and its products, like the elementwise step
and h between steps, in float32 (docs/variants.md#mixed-precision).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, cast

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from . import _checks, cudnn
from .cell import Activation, LSTMCarry, LSTMParams, split_promote, state_dtype
from .precision import accumulation_dtype, as_dtype, is_mixed, matmul, rows_transposed, weight_transposed
from .fused import FusedLoop, fused_call
from .pointwise import PlainPointwise, VariantPointwise, plain_bias, pointwise_for
from .variants import (
    LSTMVariant,
    VariantParams,
    as_variant_params,
    check_carry,
    check_params,
    check_variant,
    draw_masks,
    training_call,
)
from .timeline import BACKWARD_CHUNK_ROWS as _BACKWARD_CHUNK_ROWS
from .timeline import FORWARD_CHUNK_STEPS as _FORWARD_CHUNK_STEPS
from .timeline import GRADIENTS as GRADIENTS
from .timeline import MASKED_OUTPUTS as MASKED_OUTPUTS
from .timeline import Steps as Steps
from .timeline import at as _at
from .timeline import chunk_steps, input_chunk, over_time
from .timeline import no_cotangent as _no_cotangent
from .timeline import over_chunks as _over_chunks
from .timeline import put as _put
from .timeline import reset_steps as reset_steps
from .timeline import valid_steps as valid_steps

__all__ = ["lstm", "lstm_variant", "lstm_variant_cell", "GRADIENTS", "MASKED_OUTPUTS"]


# ----------------------------------------------------------------------------- what a loop is


@dataclass(frozen=True)
class Loop:
    """Everything static about one loop over time: the cell's elementwise step and the per-step rules.

    Attributes:
        cell: the elementwise step (``jaxlstm.pointwise``).
        reverse: read from the last step to the first.
        unroll: ``lax.scan``'s unroll.
        masked_output: what a step that doesn't count outputs, ``"zeros"`` or ``"previous"``.
        recurrent_dropout: the rate that ``rec_keep`` (one mask per sequence) drops ``h`` with
            before ``h·W_hh``; 0 without recurrent dropout.
        zoneout_h: the zoneout rate of ``h`` (0: none); with ``zone_h_flags`` the per-step flags
            of ``Steps.zone_h`` decide (training), else the expectation mixes ``h``.
        zone_h_flags: whether ``zoneout_h`` acts through ``Steps.zone_h`` (training).
    """

    cell: PlainPointwise | VariantPointwise
    reverse: bool = False
    unroll: int = 1
    masked_output: str = "zeros"
    recurrent_dropout: float = 0.0
    zoneout_h: float = 0.0
    zone_h_flags: bool = False


# ----------------------------------------------------------------------------- one step


def restart_where(carry: LSTMCarry, restart: LSTMCarry, reset_t) -> LSTMCarry:
    """The carry a step starts from: ``restart`` where ``reset_t`` ``(N,)`` is set (unchecked)."""
    if reset_t is None:
        return carry
    restarts = reset_t[..., None]
    return LSTMCarry(jnp.where(restarts, restart.h, carry.h), jnp.where(restarts, restart.c, carry.c))


def keep_valid(carry: LSTMCarry, new: LSTMCarry, valid_t, masked_output: str) -> tuple[LSTMCarry, Array]:
    """``(next carry, output)`` of a step: where ``valid_t`` ``(N,)`` is unset the step doesn't
    count, so the carry stays and the output is zeros or, with ``"previous"``, the carry's h."""
    if valid_t is None:
        return new, new.h
    keep = valid_t[..., None]
    skipped = carry.h if masked_output == "previous" else jnp.zeros_like(new.h)
    kept = LSTMCarry(jnp.where(keep, new.h, carry.h), jnp.where(keep, new.c, carry.c))
    return kept, jnp.where(keep, new.h, skipped)


def dropped(values, keep, rate: float):
    """Inverted dropout: ``values ⊙ keep / (1 − rate)`` (``keep`` broadcasts)."""
    return jnp.where(keep, values / (1.0 - rate), jnp.zeros_like(values))


def _zoneout_h(loop: Loop, previous, new, zone_t):
    """``h`` after zoneout: units flagged in ``zone_t`` keep ``previous`` (training), else the expectation."""
    if loop.zoneout_h == 0.0:
        return new
    previous = as_dtype(previous, new.dtype)
    if loop.zone_h_flags:
        return jnp.where(zone_t, previous, new)
    return loop.zoneout_h * previous + (1.0 - loop.zoneout_h) * new


def _normalized_input(loop: Loop, from_input):
    """Layer norm's input side ``x·W_ih`` normalized: ``(â, 1/σ)`` (only a ``separate`` cell has it)."""
    return cast(VariantPointwise, loop.cell).normalize_input(from_input)


def _step(loop: Loop, params: VariantParams, small, carry, restart, x_t, steps_t: Steps, rec_keep, *, projected):
    """One step, shared by both loops: restart where ``reset``; the matmuls around the cell's
    elementwise step (``h·W_hh`` before it, ``·W_hr`` after it); zoneout of ``h``; keep the new
    carry only where ``valid``.

    With ``projected``, ``x_t`` is already ``x·W_ih`` (``+ b`` unless the cell reads the two
    matmuls apart), ``(N, 4H)``, its padding zeroed before the projection. Returns
    ``(new_carry, output, residuals, carry_in, h_cell)``: the cell's residuals, the carry the
    step started from (after any restart) and the cell's output before the projection, which
    the fused backward pass needs.
    """
    valid_t = steps_t.valid
    if valid_t is not None and not projected:  # what padding holds, even NaN, must not reach the gradients
        x_t = jnp.where(valid_t[..., None], x_t, jnp.zeros_like(x_t))
    carry = restart_where(carry, restart, steps_t.reset)
    h = carry.h if rec_keep is None else dropped(carry.h, rec_keep, loop.recurrent_dropout)
    compute = params.w_hh.dtype  # matmul operands in it; products and the elementwise step in accumulation_dtype
    from_input = x_t if projected else matmul(x_t, params.w_ih, compute)
    if loop.cell.separate:  # layer norm: the input side normalized (the fused loop's by its chunk)
        z = (from_input if projected else _normalized_input(loop, from_input), matmul(h, params.w_hh, compute))
    else:
        z = from_input + matmul(h, params.w_hh, compute)
        if not projected:  # the fused loop's projection already holds b
            z = z + jnp.expand_dims(as_dtype(params.b, z.dtype), tuple(range(z.ndim - 1)))
    h_cell, c_new, residuals = loop.cell.forward(small, z, carry.c, steps_t.zone_c)
    h_new = h_cell if params.w_hr is None else matmul(h_cell, params.w_hr, compute)
    h_new = as_dtype(_zoneout_h(loop, carry.h, h_new, steps_t.zone_h), carry.h.dtype)
    new_carry, output = keep_valid(carry, LSTMCarry(h_new, c_new), valid_t, loop.masked_output)
    return new_carry, output, residuals, carry, h_cell


# ----------------------------------------------------------------------------- the loops


def _loop(loop: Loop, params: VariantParams, xs_tm, carry: LSTMCarry, restart, steps: Steps, rec_keep):
    """The loop over time-major inputs that JAX differentiates itself (``gradient="autodiff"``)."""
    small = _small_params(loop, params)

    def step(carry: LSTMCarry, inputs):
        x_t, steps_t = inputs
        carry, output, _, _, _ = _step(loop, params, small, carry, restart, x_t, steps_t, rec_keep, projected=False)
        return carry, output

    return jax.lax.scan(step, carry, (xs_tm, steps), reverse=loop.reverse, unroll=loop.unroll)


def _project(loop: Loop, params: VariantParams, x_2d):
    """The input matmul of a chunk's rows: ``x·W_ih`` (``+ b`` unless the cell adds ``b`` itself)."""
    projected = matmul(x_2d, params.w_ih, params.w_ih.dtype)
    if loop.cell.separate:
        return projected
    return projected + as_dtype(params.b, projected.dtype)[None]


def _small_params(loop: Loop, params: VariantParams):
    """The cell's elementwise parameters in the accumulation dtype, which its step runs in (so their
    gradients are summed over steps in it too)."""
    wide = accumulation_dtype(params.w_hh.dtype)
    return jax.tree.map(lambda a: as_dtype(a, wide), loop.cell.small_params(params))


def _fused_loop(loop: Loop, params: VariantParams, xs, carry, restart, steps: Steps, rec_keep, *, save):
    """The fused path's forward loop over batch-first ``xs`` ``(N, T, D)``.

    Time runs in chunks of ``_FORWARD_CHUNK_STEPS`` steps. Per chunk, one GEMM
    projects the chunk's inputs (x·W_ih + b for its N x steps rows); the chunk's
    steps then run unrolled, each adding h·W_hh to its slice of the projection
    at a static offset, and the chunk's outputs are written in place with one
    update per array. So XLA:CPU sees fewer, larger operations and its fusions
    read the projection at static offsets (a projection hoisted over the whole
    sequence is read through dynamic slices, which made the loop slower than
    two matmuls per step). Measured against that per-step scan, one process,
    interleaved: forward 13.8 -> 12.8 ms at (32, 128, 128, 256), 0.95 -> 0.76 ms
    at (1, 256, 32, 128); compiling costs about 0.15 s more. No time-major copy of the inputs or
    outputs is made. With ``save`` it also writes what the backward pass needs,
    each as its own ``(N, T, ·)`` array (the backward fusions read separate
    operands several times faster than slices of one): the cell's residuals
    (the plain cell's four activated gates), the carry each step started from
    and, under a projection, the cell's output before it.
    """
    n, time, input_size = xs.shape
    small = _small_params(loop, params)
    rows = 4 * params.hidden_size

    def one_step(carry, x_t, steps_t):
        new, output, residuals, carry_in, h_cell = _step(
            loop, params, small, carry, restart, x_t, steps_t, rec_keep, projected=True
        )
        if not save:
            return new, (output,)
        return new, (output, *residuals, carry_in.h, carry_in.c) + (() if params.w_hr is None else (h_cell,))

    example = Steps(*cast(Any, (None if a is None else jax.ShapeDtypeStruct(a.shape[1:], a.dtype) for a in steps)))
    from_input = jax.ShapeDtypeStruct((n, rows), accumulation_dtype(xs.dtype))
    if loop.cell.separate:
        from_input = jax.eval_shape(functools.partial(_normalized_input, loop), from_input)
    shapes = jax.eval_shape(one_step, carry, from_input, example)[1]
    buffers = tuple(jnp.zeros((n, time, *s.shape[1:]), s.dtype) for s in shapes)

    def chunk(state, first, length):
        """Steps ``first .. first + length - 1`` (``length`` static), in the loop's direction."""
        carry, buffers = state
        steps_c = steps.slice(first, length)
        x_chunk = input_chunk(xs, steps_c, first, length)
        projected = _project(loop, params, x_chunk.reshape(-1, input_size)).reshape(n, length, rows)
        if loop.cell.separate:  # layer norm of the input side, for the chunk's steps at once
            projected = _normalized_input(loop, projected)
        values = [[None] * length for _ in buffers]
        for j in reversed(range(length)) if loop.reverse else range(length):
            steps_j = Steps(*(None if a is None else a[j] for a in steps_c))
            carry, step_values = one_step(carry, jax.tree.map(lambda a: a[:, j], projected), steps_j)
            for column, value in zip(values, step_values, strict=True):
                column[j] = value
        buffers = tuple(
            jax.lax.dynamic_update_slice_in_dim(buffer, jnp.stack(column, axis=1), first, axis=1)
            for buffer, column in zip(buffers, values, strict=True)
        )
        return carry, buffers

    size = chunk_steps(time, _FORWARD_CHUNK_STEPS)
    final, buffers = _over_chunks(chunk, (carry, buffers), time, size, backward=loop.reverse, unroll=loop.unroll)
    return final, buffers[0], buffers[1:]


# ----------------------------------------------------------------------------- the fused gradient


def _scan_forward(loop: Loop, diff, nondiff, save: bool):
    params, xs, carry, restart = diff
    rec_keep, steps = nondiff
    final, hs, saved = _fused_loop(loop, params, xs, carry, restart, steps, rec_keep, save=save)
    return (final, hs), saved


def _scan_backward(loop: Loop, diff, nondiff, saved, d_outputs, unread):
    params, xs, _, _ = diff
    rec_keep, steps = nondiff
    d_final, d_hs = d_outputs
    # A loss on the final carry alone: hs's zeros are not read (it was superlinear in T).
    residuals = (params, xs, rec_keep, steps, saved)
    return _fused_backward(loop, residuals, (d_final, None if unread[1] else d_hs))[:4]


def _scan_reference(loop: Loop, diff, nondiff):
    """The loop JAX differentiates, batch-first: forward mode is its JVP."""
    params, xs, carry, restart = diff
    rec_keep, steps = nondiff
    final, hs_tm = _loop(loop, params, jnp.moveaxis(xs, 1, 0), carry, restart, steps, rec_keep)
    return final, jnp.moveaxis(hs_tm, 0, 1)


# The fused path in every mode (jaxlstm.fused): reverse mode the fused backward pass, forward mode the
# JVP of the autodiff loop.
_FUSED = FusedLoop(_scan_forward, _scan_backward, _scan_reference)


def _zoneout_h_backward(loop: Loop, dh, zone_t) -> tuple[Array, Array | None]:
    """``(d new h, d previous h)`` through ``_zoneout_h``; the second is ``None`` without zoneout."""
    if loop.zoneout_h == 0.0:
        return dh, None
    if loop.zone_h_flags:
        zeros = jnp.zeros_like(dh)
        return jnp.where(zone_t, zeros, dh), jnp.where(zone_t, dh, zeros)
    return (1.0 - loop.zoneout_h) * dh, loop.zoneout_h * dh


def _backward_step(loop: Loop, params, small, saved, d_hs, rec_keep, zeros):
    """The backward pass's step: carries the (dh, dc) recurrence one step back and writes the
    step's gradients of the matmuls' outputs (dz, and under a projection d h) into the chunk."""
    cell, (zeros_h, zeros_c) = loop.cell, zeros
    compute = params.w_hh.dtype
    *cell_saved, h_prev, c_prev = saved if params.w_hr is None else saved[:-1]
    w_hh_t = params.w_hh.T
    w_hr_t = None if params.w_hr is None else params.w_hr.T
    premask = bool(jax.tree.leaves(small))  # the cell's parameter gradients are summed over rows

    def step(state, inputs):
        # state: cotangents of the carry after this step, those collected for the initial carry,
        # those of the cell's own parameters, the chunk's gradients so far and where it starts.
        (dh, dc), d_initial, d_small, grads_chunk, first = state
        t, steps_t, zero_out = inputs
        valid_t, reset_t = steps_t.valid, steps_t.reset
        residuals = tuple(_at(buffer, t) for buffer in cell_saved)
        c_prev_t = _at(c_prev, t)
        d_out = zero_out if d_hs is None else _at(d_hs, t)  # None: no loss reads the outputs
        if valid_t is None:
            dh = dh + d_out
        else:
            keep = valid_t[..., None]
            d_skipped = d_out if loop.masked_output == "previous" else zeros_h
            dh, d_passed = dh + jnp.where(keep, d_out, zeros_h), jnp.where(keep, zeros_h, d_skipped)
        dh_new, dh_kept = _zoneout_h_backward(loop, dh, steps_t.zone_h)
        dh_cell, dc_cell = dh_new if w_hr_t is None else matmul(dh_new, w_hr_t, compute), dc
        if valid_t is not None and premask:
            dh_cell, dc_cell = jnp.where(keep, dh_cell, jnp.zeros_like(dh_cell)), jnp.where(keep, dc, zeros_c)
        dz, dc_prev, d_small_t = cell.backward(small, residuals, c_prev_t, steps_t.zone_c, dh_cell, dc_cell)
        dz_input, dz_h = cast("tuple[Array, Array]", dz if cell.separate else (dz, dz))
        dh_prev = matmul(dz_h, w_hh_t, compute)
        if rec_keep is not None:
            dh_prev = dropped(dh_prev, rec_keep, loop.recurrent_dropout)
        if dh_kept is not None:
            dh_prev = dh_prev + dh_kept
        grads = (dz_input, dz_h) if cell.separate else (dz,)
        if w_hr_t is not None:
            grads = (*grads, dh_new)
        if valid_t is not None:
            # (dz,) only when not cell.separate, and then dz is one array
            grads = tuple(jnp.where(keep, g, jnp.zeros_like(g)) for g in cast("tuple[Array, ...]", grads))
            dh_prev = jnp.where(keep, dh_prev, dh) + d_passed
            dc_prev = jnp.where(keep, dc_prev, dc)
        if reset_t is not None:
            restart = reset_t[..., None]
            d_initial = LSTMCarry(
                d_initial.h + jnp.where(restart, dh_prev, zeros_h), d_initial.c + jnp.where(restart, dc_prev, zeros_c)
            )
            dh_prev, dc_prev = jnp.where(restart, zeros_h, dh_prev), jnp.where(restart, zeros_c, dc_prev)
        if d_small_t is not None:
            d_small = jax.tree.map(jnp.add, d_small, d_small_t)
        grads_chunk = tuple(_put(buffer, g, t - first) for buffer, g in zip(grads_chunk, grads, strict=True))
        return (LSTMCarry(dh_prev, dc_prev), d_initial, d_small, grads_chunk, first), None

    return step


def _gemm_rows(chunk, compute):
    """A chunk's ``(N, t, k)`` rows as the transposed ``(k, N·t)`` left operand of a weight-gradient GEMM."""
    if is_mixed(compute):  # narrow dots: a transpose XLA keeps, or the dot would run in float32
        return rows_transposed(chunk, compute)
    return chunk.reshape(-1, chunk.shape[-1]).T


def _fused_backward(loop: Loop, residuals, cotangents):
    """The backward pass, one chunk of steps at a time, in backward time order.

    Per chunk: a scan over its steps carries the (dh, dc) recurrence and writes
    each step's gate pre-activation gradient dz into a chunk buffer (the cell's
    elementwise part differentiated step by step); then dW_ih += Xᵀ·dz,
    dW_hh += H_prevᵀ·dz, db += Σ dz, dX = dz·W_ihᵀ and, under a projection,
    dW_hr += H̃ᵀ·dh as GEMMs over the chunk's N x steps rows. Chunking keeps dz
    in cache and never allocates (and zero-fills) a (N, T, 4H) buffer.
    """
    params, xs, rec_keep, steps, saved = residuals
    d_final, d_hs = cotangents
    n, time, input_size = xs.shape
    cell, rows = loop.cell, 4 * params.hidden_size
    compute, wide = params.w_hh.dtype, accumulation_dtype(params.w_hh.dtype)
    small = _small_params(loop, params)
    zeros = (jnp.zeros_like(d_final.h), jnp.zeros_like(d_final.c))
    step = _backward_step(loop, params, small, saved, d_hs, rec_keep, zeros)
    h_prev, h_cell = (saved[-2], None) if params.w_hr is None else (saved[-3], saved[-1])
    w_ih_t = weight_transposed(params.w_ih, compute) if is_mixed(compute) else None  # float32: as it was
    grad_widths = (rows, rows) if cell.separate else (rows,)
    if params.w_hr is not None:
        grad_widths = (*grad_widths, params.recurrent_size)

    def chunk(state, first, length):
        """Steps ``first .. first + length - 1`` (``length`` static)."""
        d_carry, d_initial, d_small, d_weights, d_xs = state
        steps_c = steps.slice(first, length)
        grads_chunk = tuple(jnp.zeros((n, length, width), wide) for width in grad_widths)
        zero_outs = None if d_hs is not None else jnp.zeros((length, *d_final.h.shape), d_final.h.dtype)
        (d_carry, d_initial, d_small, grads_chunk, _), _ = jax.lax.scan(
            step,
            (d_carry, d_initial, d_small, grads_chunk, first),
            (first + jnp.arange(length, dtype=jnp.int32), steps_c, zero_outs),
            reverse=not loop.reverse,
            unroll=loop.unroll,
        )
        x_chunk = input_chunk(xs, steps_c, first, length)  # as in the forward loop
        h_chunk = jax.lax.dynamic_slice_in_dim(h_prev, first, length, axis=1)
        if rec_keep is not None:
            h_chunk = dropped(h_chunk, rec_keep[:, None, :], loop.recurrent_dropout)
        grads_2d = [g.reshape(n * length, g.shape[-1]) for g in grads_chunk]
        dz_input, dz_h = (grads_2d[0], grads_2d[1]) if cell.separate else (grads_2d[0], grads_2d[0])
        # XLA would fold Xᵀ into the dot as a transposed operand, which takes its slower GEMM
        # path (measured 12.3 -> 10.6 ms at (32, 128, 128, 256) for the three GEMMs); the
        # barrier makes it write Xᵀ and H_prevᵀ out and run plain GEMMs.
        if is_mixed(compute):  # narrow dots: a transpose XLA keeps, or the dot would run in float32
            x_t, h_t = rows_transposed(x_chunk, compute), rows_transposed(h_chunk, compute)
        else:
            x_t, h_t = jax.lax.optimization_barrier(
                (x_chunk.reshape(-1, input_size).T, h_chunk.reshape(-1, h_chunk.shape[-1]).T)
            )
        d_xs_chunk = matmul(dz_input, params.w_ih.T if w_ih_t is None else w_ih_t, compute)
        d_xs_chunk = d_xs_chunk.reshape(n, length, input_size)
        d_xs = jax.lax.dynamic_update_slice_in_dim(d_xs, d_xs_chunk, first, axis=1)
        d_w_ih, d_w_hh, d_b, d_w_hr = d_weights
        d_w_ih, d_w_hh = d_w_ih + matmul(x_t, dz_input, compute), d_w_hh + matmul(h_t, dz_h, compute)
        if d_b is not None:
            d_b = d_b + jnp.sum(dz_input, axis=0)
        if d_w_hr is not None:
            h_cell_chunk = jax.lax.dynamic_slice_in_dim(cast(Array, h_cell), first, length, axis=1)  # w_hr: saved
            d_w_hr = d_w_hr + matmul(_gemm_rows(h_cell_chunk, compute), grads_2d[-1], compute)
        return d_carry, d_initial, d_small, (d_w_ih, d_w_hh, d_b, d_w_hr), d_xs

    d_weights = tuple(  # summed over chunks in the accumulation dtype
        None if w is None else jnp.zeros(w.shape, wide)
        for w in (params.w_ih, params.w_hh, None if cell.separate else params.b, params.w_hr)
    )
    state = (
        LSTMCarry(d_final.h, d_final.c),
        LSTMCarry(*zeros),
        jax.tree.map(jnp.zeros_like, small),
        d_weights,
        jnp.zeros(xs.shape, wide),
    )
    size = chunk_steps(time, -(-_BACKWARD_CHUNK_ROWS // max(n, 1)) if isinstance(n, int) else 1)
    state = _over_chunks(chunk, state, time, size, backward=not loop.reverse)  # against the forward loop
    d_carry, d_initial, d_small, (d_w_ih, d_w_hh, d_b, d_w_hr), d_xs = state
    d_params = params._replace(w_ih=d_w_ih, w_hh=d_w_hh, b=d_b, w_hr=d_w_hr)
    if d_small is not None:
        d_params = d_params._replace(**{k: v for k, v in d_small._asdict().items() if v is not None})
    # Each cotangent in its primal's dtype: the compute dtype for params and xs.
    d_params = d_params._replace(
        **{k: as_dtype(v, getattr(params, k).dtype) for k, v in d_params._asdict().items() if v is not None}
    )
    d_xs = as_dtype(d_xs, xs.dtype)
    d_restart = None if steps.reset is None else d_initial
    d_rec_keep = _no_cotangent(rec_keep)
    return d_params, d_xs, d_carry, d_restart, d_rec_keep, Steps(*(_no_cotangent(a) for a in steps))




# ----------------------------------------------------------------------------- the public functions


def _cell_params(params, variant: LSTMVariant | None) -> tuple[LSTMVariant | None, VariantParams]:
    """Checks ``params`` against ``variant``; returns ``(variant, params)``, the variant ``None``
    when it is the plain LSTM and the params as ``VariantParams`` (``None`` for the absent weights)."""
    if variant is None:
        _checks.params(params)
        return None, VariantParams(*params)
    check_variant(variant)
    params = as_variant_params(params)
    check_params(params, variant)
    return (None if variant.is_plain else variant), params


def _check_carry(carry, batch_shape, params: VariantParams, variant, name: str) -> None:
    if variant is None:
        _checks.carry(carry, batch_shape, params.hidden_size, name)
    else:
        check_carry(carry, batch_shape, params.recurrent_size, params.hidden_size, name)


def lstm(
    params: LSTMParams | VariantParams,
    xs: Float[Array, "*batch time input"],
    carry: LSTMCarry | None = None,
    *,
    seq_lengths: Int[Array, "*batch"] | None = None,
    mask: Bool[Array, "*batch time"] | None = None,
    resets: Bool[Array, "*batch time"] | None = None,
    reset_carry: LSTMCarry | None = None,
    masked_output: str = "zeros",
    reverse: bool = False,
    unroll: int = 1,
    gradient: str = "fused",
    gate_fn: Activation = jax.nn.sigmoid,
    activation_fn: Activation = jnp.tanh,
    checkpoint_every: int | None = None,
    variant: LSTMVariant | None = None,
    dropout_key: PRNGKeyArray | None = None,
    deterministic: bool | None = None,
    backend: str = "auto",
    cudnn_precision: str = "float32",
) -> tuple[LSTMCarry, Float[Array, "*batch time hidden"]]:
    """Runs one LSTM layer (one direction) over whole sequences: the plain cell or any ``variant``.

    Args:
        params: ``LSTMParams`` with shapes (D, 4H), (H, 4H), (4H,); with a
            ``variant``, the ``VariantParams`` it uses (``init_variant_params``).
        xs: inputs, ``(*batch, T, D)``, batch-first; ``*batch`` may be empty
            (one sequence) or several dims.
        carry: initial ``LSTMCarry``, ``h`` ``(*batch, R)`` and ``c``
            ``(*batch, H)`` (R = H, or P = ``proj_size`` with a projection);
            zeros when ``None``. To stream a long sequence in chunks, pass the
            previous chunk's ``final_carry`` (wrapped in
            ``jax.lax.stop_gradient`` to truncate backpropagation there).
        seq_lengths: optional ``(*batch,)`` integers in [0, T]. Steps at or past a
            sequence's length leave its carry unchanged and output zeros.
            Concrete lengths outside [0, T] raise a ValueError; traced ones
            (inside ``jit``) can't be inspected and are clamped to [0, T].
        mask: optional ``(*batch, T)`` bools, any pattern: a ``False`` step
            leaves the carry unchanged. With ``seq_lengths``, a step counts
            when both allow it.
        resets: optional ``(*batch, T)`` bools marking the first step of a new
            segment (several sequences packed in one row): the carry restarts
            from ``reset_carry`` there. With ``reverse``, each segment is read
            backward on its own.
        reset_carry: the ``LSTMCarry`` a reset restarts from, ``(*batch, H)``;
            by default ``carry`` (zeros when ``carry`` is ``None``).
        masked_output: what a step that doesn't count outputs: ``"zeros"``, or
            ``"previous"`` — the carry's ``h``, i.e. the last counted step's
            output (Keras' standalone ``LSTM`` with a mask).
        reverse: read each sequence from its own last valid step back to
            step 0. Outputs stay aligned with the inputs (``hs[..., t, :]``
            belongs to ``xs[..., t, :]``), as PyTorch's packed sequences and
            Keras' masked ``go_backwards`` give.
        unroll: iterations of the compiled loop to unroll (``lax.scan``'s
            ``unroll``); a speed knob only, results do not change. The fused
            path's forward loop already runs 4 steps per iteration.
        gradient: ``"fused"`` (a hand-written backward pass over the whole
            sequence, faster) or ``"autodiff"`` (JAX differentiates the scan).
            Values and gradients agree to float rounding. With custom
            activations on the plain cell, or a carry whose c is wider than
            float32 while the computation is not, the autodiff path is used.
            Mixed precision (bfloat16/float16 params and inputs) keeps the
            fused path: matmuls in that dtype accumulated in float32, the
            elementwise step in float32 (``jaxlstm.precision``;
            docs/variants.md#mixed-precision).
        gate_fn, activation_fn: elementwise activations of the gates (σ) and
            of the candidate and cell output (tanh); see ``jaxlstm.lstm_cell``.
        checkpoint_every: for very long sequences, cut time into chunks of
            this many steps and keep only the carries between chunks for the
            backward pass (``jax.checkpoint``): each chunk's forward runs again
            during the backward pass. Memory for training drops from O(T) gate
            activations to O(T / checkpoint_every + checkpoint_every); values
            and gradients do not change.
        variant: a ``jaxlstm.LSTMVariant`` (projection, peepholes, layer
            norm, cifg, forget bias, cell clipping, dropouts, zoneout);
            ``None``: the plain LSTM. Every argument above means the same for
            every variant. See docs/variants.md.
        dropout_key: a PRNG key for a variant's dropout and zoneout masks
            (``jaxlstm.variants.draw_masks`` shows what is drawn from it).
        deterministic: ``True``: no random draws (dropout off, zoneout its
            expectation). ``False``: draw masks from ``dropout_key`` (required
            when a variant's rate is > 0). ``None`` (default): not
            deterministic exactly when a ``dropout_key`` is given.
        backend: ``"auto"`` (default): cuDNN on a CUDA GPU when it computes
            this call exactly, else jaxlstm's XLA loop; ``"xla"``: always the
            loop; ``"cudnn"``: cuDNN, or a ValueError saying why not.
            ``jaxlstm.backend_for`` tells which a call gets; see docs/gpu.md.
        cudnn_precision: the matmuls' precision on cuDNN: ``"float32"``
            (default) or ``"tf32"`` (TensorFloat-32, faster, ~1e-3 relative).

    Returns:
        ``(final_carry, hs)``: ``final_carry`` is each sequence's carry after
        its own last valid step (after step 0 when ``reverse``), ``h``
        ``(*batch, R)`` and ``c`` ``(*batch, H)``; ``hs`` is every step's
        output, ``(*batch, T, R)``. One cell is applied T times: H is the size
        of the one state vector, not a count of cells.

    >>> import jax, jax.numpy as jnp, jaxlstm as jl
    >>> params = jl.init_params(jax.random.key(0), input_size=8, hidden_size=32)
    >>> xs = jnp.ones((4, 10, 8))                      # (batch, time, input)
    >>> final, hs = jl.lstm(params, xs, seq_lengths=jnp.array([10, 7, 3, 0]))
    >>> hs.shape, final.h.shape                        # (batch, time, hidden), (batch, hidden)
    ((4, 10, 32), (4, 32))
    >>> v = jl.LSTMVariant(proj_size=4, layer_norm=True)
    >>> p = jl.init_variant_params(jax.random.key(0), 8, 16, v)
    >>> final, hs = jl.lstm(p, xs, variant=v, seq_lengths=jnp.array([10, 7, 3, 0]))
    >>> hs.shape, final.h.shape, final.c.shape         # h and outputs P = 4 wide, c H = 16
    ((4, 10, 4), (4, 4), (4, 16))
    """
    with jax.named_scope("jaxlstm.lstm"):
        variant, params = _cell_params(params, variant)
        _checks.inputs(xs, params.input_size, "xs", min_rank=2, layout="(*batch, time, input)")
        batch_shape, time = tuple(xs.shape[:-2]), xs.shape[-2]
        carry = _start_carry(carry, reset_carry, batch_shape, params, variant, xs.dtype)
        unroll, checkpoint_every = _check_options(
            unroll, masked_output, gradient, gate_fn, activation_fn, checkpoint_every
        )
        reverse = _checks.flag(reverse, "reverse")
        training = training_call(variant, dropout_key, deterministic)  # checks dropout_key and deterministic
        if seq_lengths is not None:  # checked here, once: concrete lengths out of [0, T] raise, traced ones clamp
            seq_lengths = _checks.seq_lengths(seq_lengths, batch_shape, time)
        call: dict[str, Any]
        call = dict(seq_lengths=seq_lengths, mask=mask, resets=resets, masked_output=masked_output, gradient=gradient)
        call.update(gate_fn=gate_fn, activation_fn=activation_fn, checkpoint_every=checkpoint_every, variant=variant)
        if _on_cudnn(backend, cudnn_precision, params, xs, (carry, reset_carry), call):
            finals, hs = cudnn.run(
                ((params,),), xs, ((carry,),), seq_lengths=seq_lengths, reverse=reverse,
                cudnn_precision=cudnn_precision, layer=lstm,
            )  # fmt: skip
            return finals[0][0], hs
        steps = Steps(
            valid_steps(seq_lengths, mask, batch_shape, time), reset_steps(resets, batch_shape, time, reverse=reverse)
        )
        rec_keep = None
        if training:
            xs, steps, rec_keep = _draw(dropout_key, cast(LSTMVariant, variant), params, xs, steps)  # training: set
        restart = None if steps.reset is None else (carry if reset_carry is None else reset_carry)
        cell = pointwise_for(variant, gate_fn, activation_fn, training)
        if isinstance(cell, PlainPointwise):
            params = params._replace(b=plain_bias(params.b, variant))
        params, xs, carry, restart = split_promote(params, xs, carry, restart)
        compute, wide = xs.dtype, accumulation_dtype(xs.dtype)
        carry, restart = (None if k is None else _loop_carry(k, wide) for k in (carry, restart))
        loop = Loop(
            cell,
            reverse=reverse,
            unroll=unroll,
            masked_output=masked_output,
            recurrent_dropout=0.0 if rec_keep is None else cast(LSTMVariant, variant).recurrent_dropout,  # training
            zoneout_h=0.0 if variant is None else variant.zoneout_h,
            zone_h_flags=steps.zone_h is not None,
        )
        fused = gradient == "fused" and cell.fusable and cast(LSTMCarry, carry).c.dtype == wide  # a carry: given

        def run(carry, xs, steps):
            """The loop over a batch-first stretch of time ``(*batch, t, D)``; outputs batch-first."""
            if fused:
                return _fused_flat(loop, params, xs, carry, restart, steps, rec_keep)
            final_carry, hs_tm = _loop(loop, params, jnp.moveaxis(xs, -2, 0), carry, restart, steps, rec_keep)
            return final_carry, jnp.moveaxis(hs_tm, 0, -2)

        final, hs = over_time(run, carry, xs, steps, checkpoint_every, reverse)
        return final._replace(h=as_dtype(final.h, compute)), as_dtype(hs, compute)


def _on_cudnn(backend: str, cudnn_precision: str, params, xs, carries, call: dict) -> bool:
    """Whether this ``jl.lstm`` call runs on cuDNN (``cudnn.choose``, which raises for ``backend="cudnn"``
    when cuDNN can't compute it exactly)."""
    given = [c for c in carries if c is not None]
    choice = cudnn.choose(backend, cudnn_precision, ((params,),), xs, given, where="jaxlstm.lstm", **call)
    return choice.backend == "cudnn"


def _loop_carry(carry: LSTMCarry, wide) -> LSTMCarry:
    """A carry as the loops keep it (docs/variants.md#mixed-precision). The cell state sums over every
    step: at least float32 whatever carry is given (a bfloat16 c stops growing at 256), as the default
    carry is. h is carried in the accumulation dtype, cast down only as a matmul operand; outputs leave
    in the compute dtype."""
    return carry._replace(c=carry.c.astype(state_dtype(carry.c.dtype)), h=as_dtype(carry.h, wide))


def _start_carry(carry, reset_carry, batch_shape, params: VariantParams, variant, dtype) -> LSTMCarry:
    """The checked initial carry, or zeros: ``h`` in the computation dtype, ``c`` at least float32."""
    if reset_carry is not None:
        _check_carry(reset_carry, batch_shape, params, variant, "reset_carry")
    if carry is not None:
        _check_carry(carry, batch_shape, params, variant, "carry")
        return carry
    return LSTMCarry(
        jnp.zeros((*batch_shape, params.recurrent_size), dtype),
        jnp.zeros((*batch_shape, params.hidden_size), state_dtype(dtype)),
    )


def _check_options(unroll, masked_output, gradient, gate_fn, activation_fn, checkpoint_every):
    """Checks the loop's options; returns ``unroll`` and ``checkpoint_every`` as ints (or ``None``)."""
    unroll = _checks.positive_int(unroll, "unroll")
    _checks.one_of(masked_output, MASKED_OUTPUTS, "masked_output")
    _checks.one_of(gradient, GRADIENTS, "gradient")
    _checks.activation(gate_fn, "gate_fn")
    _checks.activation(activation_fn, "activation_fn")
    if checkpoint_every is not None:
        checkpoint_every = _checks.positive_int(checkpoint_every, "checkpoint_every")
    return unroll, checkpoint_every


def _draw(key, variant: LSTMVariant, params: VariantParams, xs, steps: Steps):
    """A training call's random draws, made before the loop: ``(xs, steps, rec_keep)``, with
    ``xs`` after input dropout, zoneout flags among the steps (time-major) and the recurrent
    dropout mask ``(*batch, R)`` (``None`` without)."""
    batch_shape, time = tuple(xs.shape[:-2]), xs.shape[-2]
    masks = draw_masks(key, variant, batch_shape, time, params.input_size, params.hidden_size)
    if masks.input is not None:
        xs = dropped(xs, masks.input[..., None, :], variant.input_dropout)

    def time_major(flags):
        return None if flags is None else jnp.moveaxis(flags, -2, 0)

    steps = steps._replace(zone_h=time_major(masks.zoneout_h), zone_c=time_major(masks.zoneout_c))
    return xs, steps, masks.recurrent


def _fused_flat(loop: Loop, params, xs, carry, restart, steps: Steps, rec_keep):
    """``_fused`` over the batch dims flattened into one, N = prod(batch) (1 for one sequence)."""
    batch_shape, (time, input_size) = xs.shape[:-2], xs.shape[-2:]
    n = math.prod(batch_shape)  # symbolic under jax.export's shape polymorphism

    def flat(carry):
        return None if carry is None else LSTMCarry(*(a.reshape(n, a.shape[-1]) for a in carry))

    final, hs = fused_call(
        _FUSED,
        loop,
        (params, xs.reshape(n, time, input_size), flat(carry), flat(restart)),
        (
            None if rec_keep is None else rec_keep.reshape(n, rec_keep.shape[-1]),
            steps.flatten_batch(len(batch_shape), n),
        ),
    )
    final = LSTMCarry(*(a.reshape(*batch_shape, a.shape[-1]) for a in final))
    return final, hs.reshape(*batch_shape, time, hs.shape[-1])


def lstm_variant(params, xs, carry=None, *, variant: LSTMVariant, **options):
    """``jaxlstm.lstm(params, xs, carry, variant=variant, **options)``, kept for code written before
    ``lstm`` took a ``variant``; it will go before 1.0. Shapes and checks are ``lstm``'s: xs
    ``(*batch, T, D)`` → ``(final_carry, hs)``, ``hs`` ``(*batch, T, R)``, ``h`` ``(*batch, R)``,
    ``c`` ``(*batch, H)``."""
    return lstm(params, xs, carry, variant=variant, **options)


def lstm_variant_cell(
    params: VariantParams,
    carry: LSTMCarry,
    x: Float[Array, "*batch input"],
    *,
    variant: LSTMVariant,
    gate_fn: Activation = jax.nn.sigmoid,
    activation_fn: Activation = jnp.tanh,
) -> tuple[LSTMCarry, Float[Array, "*batch recurrent"]]:
    """One deterministic step of a variant cell (no dropout; zoneout as its expectation): the
    engine's own step, as ``jaxlstm.lstm`` runs it at every time step.

    Args:
        params: ``VariantParams`` for ``variant``.
        carry: ``LSTMCarry``: ``h`` ``(*batch, R)``, ``c`` ``(*batch, H)``.
        x: ``(*batch, D)``.
        variant: the ``LSTMVariant``.
        gate_fn, activation_fn: as ``jaxlstm.lstm_cell``.

    Returns:
        ``(new_carry, h)``, ``h`` ``(*batch, R)`` (the same array as ``new_carry.h``).

    >>> import jax, jax.numpy as jnp, jaxlstm as jl
    >>> v = jl.LSTMVariant(proj_size=2, peepholes=True)
    >>> p = jl.init_variant_params(jax.random.key(0), 3, 5, v)
    >>> carry = jl.LSTMCarry(jnp.zeros((4, 2)), jnp.zeros((4, 5)))
    >>> carry, h = jl.lstm_variant_cell(p, carry, jnp.ones((4, 3)), variant=v)
    >>> h.shape, carry.c.shape
    ((4, 2), (4, 5))
    """
    with jax.named_scope("jaxlstm.lstm_variant_cell"):
        check_variant(variant)
        params = as_variant_params(params)
        check_params(params, variant)
        _checks.inputs(x, params.input_size, "x", min_rank=1)
        check_carry(carry, x.shape[:-1], params.recurrent_size, params.hidden_size, "carry")
        _checks.activation(gate_fn, "gate_fn")
        _checks.activation(activation_fn, "activation_fn")
        cell = pointwise_for(variant, gate_fn, activation_fn, training=False)
        if isinstance(cell, PlainPointwise):
            params = params._replace(b=plain_bias(params.b, variant))
        params, x, carry = split_promote(params, x, carry)
        loop = Loop(cell, zoneout_h=variant.zoneout_h)
        new, _, _, _, _ = _step(loop, params, cell.small_params(params), carry, None, x, Steps(), None, projected=False)
        return new, new.h
