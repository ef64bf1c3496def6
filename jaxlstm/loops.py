"""The engine's loops over time, for any cell of the protocol (``jaxlstm.Cell``): one step, the loop JAX
differentiates (``gradient="autodiff"``), and the fused path's forward loop and backward pass.

The engine owns the matmuls around a cell's elementwise step:

* ``x·W_ih`` (+ the cell's input bias) for a chunk of steps in one GEMM, then the cell's
  ``prepare_input`` on the whole chunk;
* ``h·W_hh`` every step, ``h`` after recurrent dropout (one mask per sequence, ``rec_keep``);
* in the backward pass ``dX``, ``dW_ih``, ``dW_hh``, the input bias' gradient and the cell's row
  weights' gradients (``Cell.row_weights``) as GEMMs over chunks of rows.

Every matmul goes through ``jaxlstm.precision.matmul``: with bfloat16 or float16 params and inputs its
operands are in that dtype and its products, like the cell's step and the carry between steps, in the
accumulation dtype (float32); the buffers the loops write (outputs, saved activations, the backward's
gradients, dX) keep values in the compute dtype (``precision.stored``); with float32 everything is
float32, bit for bit as before.

Padding: a step that doesn't count leaves the carry as it was, reads zeros instead of its input (so
nothing in padding, not even NaN, reaches the gradients) and outputs zeros or the previous output.
Resets restart the carry. ``reverse`` reads from the last step to the first over the same arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import jax
import jax.numpy as jnp

from .cells.base import Cell
from .fused import FusedLoop
from .precision import accumulation_dtype, as_dtype, is_mixed, loaded, matmul, narrow_storage, rows_transposed, stored
from .timeline import (
    BACKWARD_CHUNK_ROWS,
    FORWARD_CHUNK_STEPS,
    Steps,
    at,
    chunk_steps,
    input_chunk,
    over_chunks,
    put,
    zero_padding,
)

__all__ = ["Loop", "FUSED", "autodiff_loop", "dropped", "one_step"]


@dataclass(frozen=True)
class Loop:
    """What is static about one loop: the cell and the per-step rules.

    Attributes:
        cell: the ``jaxlstm.Cell``.
        reverse: read from the last step to the first.
        unroll: ``lax.scan``'s unroll (speed only).
        masked_output: what a step that doesn't count outputs, ``"zeros"`` or ``"previous"``.
        recurrent_dropout: the rate ``rec_keep`` (one mask per sequence) drops ``hidden(carry)`` with
            before ``h·W_hh``; 0 without recurrent dropout.
    """

    cell: Cell
    reverse: bool = False
    unroll: int = 1
    masked_output: str = "zeros"
    recurrent_dropout: float = 0.0


def dropped(values, keep, rate: float):
    """Inverted dropout: ``values ⊙ keep / (1 − rate)`` (``keep`` broadcasts)."""
    return jnp.where(keep, values / (1.0 - rate), jnp.zeros_like(values))


# ----------------------------------------------------------------------------- the parameters' split


def owned(cell: Cell) -> tuple[str, ...]:
    """The parameter fields the engine multiplies: the two weights and the cell's input bias."""
    return ("w_ih", "w_hh") + (() if cell.input_bias is None else (cell.input_bias,))


def input_bias(cell: Cell, params):
    return None if cell.input_bias is None else getattr(params, cell.input_bias)


def cell_params(cell: Cell, params):
    """``params`` as the cell sees them: ``None`` in the fields the engine owns, its elementwise parameters in
    the accumulation dtype (so their gradients are summed over steps in it too), row weights as they are."""
    wide = accumulation_dtype(params.w_hh.dtype)
    kept = set(owned(cell)) | set(cell.row_weights)
    widened = {k: as_dtype(v, wide) for k, v in params._asdict().items() if k not in kept and v is not None}
    return params._replace(**{name: None for name in owned(cell)}, **widened)


def _summed(cell: Cell, small):
    """The cell's parameters whose gradients the backward loop sums step by step (not its row weights)."""
    return small._replace(**{name: None for name in cell.row_weights})


def _noise(steps_t: Steps) -> dict[str, Any]:
    return {} if steps_t.noise is None else {"noise": steps_t.noise}


# ----------------------------------------------------------------------------- one step


def _tree_where(flags, new, old):
    """``new`` where ``flags`` ``(N,)`` is set, else ``old``, leaf by leaf (leaves ``(N, ·)``)."""
    return jax.tree.map(lambda a, b: jnp.where(flags[:, None], a, b), new, old)


def add_to_hidden(cell: Cell, d_carry, dh):
    """``d_carry`` with ``dh`` added to the cotangent of ``cell.hidden(carry)``."""
    _, pullback = jax.vjp(cell.hidden, d_carry)
    return jax.tree.map(jnp.add, d_carry, pullback(dh)[0])


def one_step(loop: Loop, params, small, carry, restart, from_input, steps_t: Steps, rec_keep, *, save: bool):
    """One step: restart where ``reset``; ``h·W_hh``; the cell; keep the new carry only where ``valid``.

    ``from_input`` is ``x·W_ih`` (+ input bias) after ``prepare_input``, the input zeroed on steps
    that don't count. Returns ``(new_carry, output, carry_in, saved)``, ``saved`` the cell's
    ``save`` (``None`` without ``save``).
    """
    cell = loop.cell
    if steps_t.reset is not None:
        carry = _tree_where(steps_t.reset, restart, carry)
    h = cell.hidden(carry)
    if rec_keep is not None:
        h = dropped(h, rec_keep, loop.recurrent_dropout)
    from_h = matmul(h, params.w_hh, params.w_hh.dtype)
    if save:
        new, saved = cell.step_and_save(small, from_input, from_h, carry, **_noise(steps_t))
    else:
        new, saved = cell.step(small, from_input, from_h, carry, **_noise(steps_t)), None
    output = cell.hidden(new)
    if steps_t.valid is not None:
        keep = steps_t.valid
        skipped = cell.hidden(carry) if loop.masked_output == "previous" else jnp.zeros_like(output)
        new, output = _tree_where(keep, new, carry), jnp.where(keep[:, None], output, skipped)
    return new, output, carry, saved


def project(cell: Cell, params, x_2d):
    """The input GEMM of rows ``(rows, D)``: ``x·W_ih`` (+ the input bias) ``(rows, G·H)``, accumulation dtype."""
    projected = matmul(x_2d, params.w_ih, params.w_ih.dtype)
    bias = input_bias(cell, params)
    if bias is None:
        return projected
    return projected + jnp.expand_dims(as_dtype(bias, projected.dtype), tuple(range(projected.ndim - 1)))


# ----------------------------------------------------------------------------- the loops


def autodiff_loop(loop: Loop, params, xs, carry, restart, steps: Steps, rec_keep):
    """The loop JAX differentiates itself: a scan over time-major steps. ``xs`` ``(N, t, D)``;
    returns ``(final, hs)``, ``hs`` ``(N, t, H)``."""
    cell, small = loop.cell, cell_params(loop.cell, params)
    xs_tm = jnp.moveaxis(zero_padding(xs, steps.valid), 1, 0)

    def step(carry, inputs):
        x_t, steps_t = inputs
        from_input = cell.prepare_input(small, project(cell, params, x_t))
        new, output, _, _ = one_step(loop, params, small, carry, restart, from_input, steps_t, rec_keep, save=False)
        return new, output

    final, hs_tm = jax.lax.scan(step, carry, (xs_tm, steps), reverse=loop.reverse, unroll=loop.unroll)
    return final, jnp.moveaxis(hs_tm, 0, 1)


@dataclass
class _Layout:
    """How the forward loop's saved buffers map to the cell's ``save``: found while tracing a step."""

    treedef: Any = None
    aliases: tuple[int, ...] = ()  # leaves of ``save`` that are ``hidden(carry_in)`` itself (kept once)
    narrowed: tuple[int, ...] = ()  # leaves kept in the compute dtype (``precision.stored``), widened when read


def fused_loop(loop: Loop, params, xs, carry, restart, steps: Steps, rec_keep, *, save: bool):
    """The fused path's forward loop over ``xs`` ``(N, T, D)``, chunks of 4 steps per input GEMM.

    Per chunk, one GEMM projects the chunk's inputs, the cell's ``prepare_input`` runs on the whole
    chunk, then the chunk's steps run unrolled, reading the projection at static offsets, and the
    chunk's outputs are written in place with one update per array. With ``save`` it also writes, per
    step, ``hidden(carry)`` before the step (for ``dW_hh``) and the leaves of the cell's ``save``, each
    as its own ``(N, T, ·)`` buffer (the backward fusions read separate operands faster than slices of
    one). Returns ``(final, hs, saved_buffers, layout)``.
    """
    cell = loop.cell
    n, time, input_size = xs.shape
    small = cell_params(cell, params)
    width, compute = params.w_hh.shape[-1], params.w_hh.dtype
    layout = _Layout()

    def step(carry, from_input, steps_t):
        new, output, carry_in, saved = one_step(
            loop, params, small, carry, restart, from_input, steps_t, rec_keep, save=save
        )
        if not save:
            return new, (_kept(output, compute),)
        h_prev = cell.hidden(carry_in)
        leaves, layout.treedef = jax.tree.flatten(saved)
        layout.aliases = tuple(i for i, leaf in enumerate(leaves) if leaf is h_prev)
        layout.narrowed = tuple(
            i for i, leaf in enumerate(leaves) if i not in layout.aliases and _narrowed(leaf, compute)
        )
        kept = [stored(leaf, compute) if i in layout.narrowed else leaf for i, leaf in enumerate(leaves)]
        kept = [leaf for i, leaf in enumerate(kept) if i not in layout.aliases]
        return new, (_kept(output, compute), _kept(h_prev, compute), *kept)

    example_steps = steps.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype))
    example_input = jax.ShapeDtypeStruct((n, width), accumulation_dtype(xs.dtype))
    example_input = jax.eval_shape(cell.prepare_input, small, example_input)
    shapes = jax.eval_shape(step, carry, example_input, example_steps)[1]
    buffers = tuple(jnp.zeros((n, time, *s.shape[1:]), s.dtype) for s in shapes)

    def chunk(state, first, length):
        """Steps ``first .. first + length - 1`` (``length`` static), in the loop's direction."""
        carry, buffers = state
        steps_c = steps.slice(first, length)
        x_chunk = input_chunk(xs, steps_c, first, length)
        projected = project(cell, params, x_chunk.reshape(-1, input_size)).reshape(n, length, width)
        projected = cell.prepare_input(small, projected)
        values = [[None] * length for _ in buffers]
        for j in reversed(range(length)) if loop.reverse else range(length):
            carry, step_values = step(carry, jax.tree.map(lambda a, j=j: a[:, j], projected), steps_c.step(j))
            for column, value in zip(values, step_values, strict=True):
                column[j] = value
        buffers = tuple(
            jax.lax.dynamic_update_slice_in_dim(buffer, jnp.stack(column, axis=1), first, axis=1)
            for buffer, column in zip(buffers, values, strict=True)
        )
        return carry, buffers

    size = chunk_steps(time, FORWARD_CHUNK_STEPS)
    final, buffers = over_chunks(chunk, (carry, buffers), time, size, backward=loop.reverse, unroll=loop.unroll)
    return final, loaded(buffers[0], compute), buffers[1:], layout


# ----------------------------------------------------------------------------- the fused backward pass


def _kept(value, compute):
    """An output or ``h`` as the forward loop's buffers keep it: as its bits where it is in a narrow compute
    dtype (``precision.stored``: XLA:CPU converts a narrow buffer a loop updates to float32 and back
    whole); as it is otherwise (float32 where a float32 carry made it so)."""
    return stored(value, compute) if value.dtype == compute else value


def _narrowed(leaf, compute) -> bool:
    """Whether the forward loop keeps a saved ``leaf`` in the compute dtype: a value in the accumulation
    dtype, where the engine's buffers are narrow (``precision.narrow_storage``)."""
    return narrow_storage(compute) and leaf.dtype == accumulation_dtype(compute)


def _saved_tree(layout: _Layout, buffers, h_prev, compute, *, widen: bool = True):
    """The cell's ``save`` as a tree of buffers (or of one step's values), aliases restored and narrowed
    leaves read back: in the accumulation dtype, or with ``widen=False`` in the compute dtype."""
    rest, dtype = iter(buffers), accumulation_dtype(compute) if widen else compute
    leaves = [h_prev if i in layout.aliases else next(rest) for i in range(layout.treedef.num_leaves)]
    leaves = [as_dtype(loaded(leaf, compute), dtype) if i in layout.narrowed else leaf for i, leaf in enumerate(leaves)]
    return jax.tree.unflatten(layout.treedef, leaves)


def _gemm_rows(chunk, compute):
    """A chunk's ``(N, t, k)`` rows as the transposed ``(k, N·t)`` left operand of a weight-gradient GEMM."""
    if is_mixed(compute):  # narrow dots: a transpose XLA keeps, or the dot would run in float32
        return rows_transposed(chunk, compute)
    return chunk.reshape(-1, chunk.shape[-1]).T


def _weight_transposed(w, compute, groups: int):
    """``w`` ``(k, G·m)`` transposed, ``(G·m, k)``: for a narrow dtype written out through a 3-D transpose
    (as ``rows_transposed``), else ``w.T``."""
    if not is_mixed(compute):
        return w.T
    w = as_dtype(w, compute)
    k, width = w.shape
    return w.reshape(k, groups, width // groups).transpose(1, 2, 0).reshape(width, k)


@dataclass(frozen=True)
class _Gradients:
    """What one backward step writes per row, found by tracing the cell's ``backward`` once."""

    shared: bool  # d from_input is d from_h (a cell that reads only their sum): one buffer
    rows: tuple[tuple[str, int], ...]  # (row weight, width of its product's cotangent)


def _probe(loop: Loop, small, layout: _Layout, saved, compute, d_example, steps_example: Steps) -> _Gradients:
    cell = loop.cell
    found: dict[str, Any] = {}

    def probe(saved_t, d_carry):
        h_prev, *rest = saved_t  # one step's values as the backward step reads them
        saved_t = _saved_tree(layout, rest, loaded(h_prev, compute), compute)
        d_small, d_input, d_h, _ = cell.backward(small, saved_t, d_carry, **_noise(steps_example))
        found["shared"] = d_input is d_h
        return {name: getattr(d_small, name) for name in cell.row_weights}

    one_step = [jax.ShapeDtypeStruct((a.shape[0], *a.shape[2:]), a.dtype) for a in saved]
    shapes = jax.eval_shape(probe, one_step, d_example)
    return _Gradients(found["shared"], tuple((name, shapes[name].shape[-1]) for name in cell.row_weights))


def _backward_step(loop: Loop, params, small, saved, layout, grads: _Gradients, d_hs, steps: Steps, rec_keep):
    """The backward loop's step: the carry's cotangent one step back, and the step's gradients of the
    matmuls' outputs (and of the row weights' products) written into the chunk's buffers.

    It reads everything of step ``t``, ``steps`` too, with ``at`` (a gather), and the scan slices only
    ``t``: no ``lax.dynamic_slice`` of JAX's beside those XLA makes (``at``'s docstring: an XLA:CPU bug)."""
    cell, compute, w_hh_t = loop.cell, params.w_hh.dtype, params.w_hh.T
    h_prev_buffer, *saved = saved
    premask = bool(jax.tree.leaves(_summed(cell, small)))  # summed over rows: rows that don't count add 0

    def step(state, t):
        d_carry, d_initial, d_small, grads_chunk, first = state
        steps_t = steps.map(lambda a: at(a, t, axis=0))
        valid_t, reset_t = steps_t.valid, steps_t.reset
        h_prev_t = loaded(at(h_prev_buffer, t), compute)
        saved_t = _saved_tree(layout, [at(buffer, t) for buffer in saved], h_prev_t, compute)
        h_shape = (h_prev_buffer.shape[0], *h_prev_buffer.shape[2:])
        # d_hs None: no loss reads the outputs, whose cotangents are zeros
        d_out = jnp.zeros(h_shape, compute) if d_hs is None else at(d_hs, t)
        if valid_t is None:
            d_total = d_new = add_to_hidden(cell, d_carry, d_out)
        else:
            keep = valid_t[:, None]
            d_total = add_to_hidden(cell, d_carry, jnp.where(keep, d_out, jnp.zeros_like(d_out)))
            d_new = _tree_where(valid_t, d_total, jax.tree.map(jnp.zeros_like, d_total)) if premask else d_total
        d_small_t, d_input, d_h, d_prev = cell.backward(small, saved_t, d_new, **_noise(steps_t))
        row_grads = [getattr(d_small_t, name) for name, _ in grads.rows]
        d_small_t = _summed(cell, d_small_t)
        d_h_prev = matmul(d_h, w_hh_t, compute)
        if rec_keep is not None:
            d_h_prev = dropped(d_h_prev, rec_keep, loop.recurrent_dropout)
        d_prev = add_to_hidden(cell, d_prev, d_h_prev)
        written = [d_input] if grads.shared else [d_input, d_h]
        written += row_grads
        written = [stored(g, compute) for g in written]  # read only by GEMMs, in the compute dtype
        if valid_t is not None:
            written = [jnp.where(keep, g, jnp.zeros_like(g)) for g in written]
            d_prev = _tree_where(valid_t, d_prev, d_total)
            if loop.masked_output == "previous":
                d_prev = add_to_hidden(cell, d_prev, jnp.where(keep, jnp.zeros_like(d_out), d_out))
        if reset_t is not None:
            zeros = jax.tree.map(jnp.zeros_like, d_prev)
            d_initial = jax.tree.map(jnp.add, d_initial, _tree_where(reset_t, d_prev, zeros))
            d_prev = _tree_where(reset_t, zeros, d_prev)
        if jax.tree.leaves(d_small_t):
            d_small = jax.tree.map(jnp.add, d_small, d_small_t)
        grads_chunk = tuple(put(buffer, g, t - first) for buffer, g in zip(grads_chunk, written, strict=True))
        return (d_prev, d_initial, d_small, grads_chunk, first), None

    return step


def fused_backward(loop: Loop, residuals, cotangents):
    """The backward pass, a chunk of steps at a time in backward time order: a scan over the chunk's
    steps runs the cell's ``backward`` and writes ``d from_input``, ``d from_h`` (one buffer when they
    are one array) and the row weights' product cotangents; then ``dX``, ``dW_ih``, ``dW_hh``, the input
    bias' and the row weights' gradients follow as GEMMs over the chunk's rows (never a whole
    ``(N, T, G·H)`` buffer). Returns ``(d_params, d_xs, d_carry, d_restart)``."""
    params, xs, steps, rec_keep, saved, layout = residuals
    d_final, d_hs = cotangents
    cell, (n, time, input_size) = loop.cell, xs.shape
    compute, wide = params.w_hh.dtype, accumulation_dtype(params.w_hh.dtype)
    small, bias = cell_params(cell, params), input_bias(cell, params)
    width = params.w_hh.shape[-1]
    h_prev = saved[0]
    grads = _probe(loop, small, layout, saved, compute, d_final, steps.step(0))
    step = _backward_step(loop, params, small, saved, layout, grads, d_hs, steps, rec_keep)
    widths = (width,) * (1 if grads.shared else 2) + tuple(w for _, w in grads.rows)
    w_ih_t = _weight_transposed(params.w_ih, compute, cell.num_gates)

    def chunk(state, first, length):
        d_carry, d_initial, d_small, (d_w_ih, d_w_hh, d_bias, d_rows), d_xs = state
        steps_c = steps.slice(first, length)
        grads_chunk = tuple(stored(jnp.zeros((n, length, w), wide), compute) for w in widths)
        (d_carry, d_initial, d_small, grads_chunk, _), _ = jax.lax.scan(
            step,
            (d_carry, d_initial, d_small, grads_chunk, first),
            first + jnp.arange(length, dtype=jnp.int32),
            reverse=not loop.reverse,
            unroll=loop.unroll,
        )
        x_chunk = input_chunk(xs, steps_c, first, length)
        h_chunk = loaded(jax.lax.dynamic_slice_in_dim(h_prev, first, length, axis=1), compute)
        if rec_keep is not None:
            h_chunk = dropped(h_chunk, rec_keep[:, None, :], loop.recurrent_dropout)
        grads_2d = [loaded(g, compute).reshape(n * length, g.shape[-1]) for g in grads_chunk]
        d_input, d_h = (grads_2d[0], grads_2d[0]) if grads.shared else (grads_2d[0], grads_2d[1])
        # XLA would fold Xᵀ into the dot as a transposed operand, which takes its slower GEMM path
        # (measured 12.3 -> 10.6 ms at (32, 128, 128, 256) for the three GEMMs); the barrier makes it
        # write Xᵀ and H_prevᵀ out and run plain GEMMs.
        if is_mixed(compute):  # narrow dots: a transpose XLA keeps, or the dot would run in float32
            x_t, h_t = rows_transposed(x_chunk, compute), rows_transposed(h_chunk, compute)
        else:
            x_t, h_t = jax.lax.optimization_barrier(
                (x_chunk.reshape(-1, input_size).T, h_chunk.reshape(-1, h_chunk.shape[-1]).T)
            )
        d_xs_chunk = matmul(d_input, w_ih_t, compute).reshape(n, length, input_size)
        d_xs = jax.lax.dynamic_update_slice_in_dim(d_xs, stored(d_xs_chunk, compute), first, axis=1)
        d_w_ih, d_w_hh = d_w_ih + matmul(x_t, d_input, compute), d_w_hh + matmul(h_t, d_h, compute)
        if d_bias is not None:
            d_bias = d_bias + jnp.sum(d_input, axis=0, dtype=wide)
        d_rows = tuple(
            d_w + matmul(_rows_of(layout, saved, compute, cell.row_weights[name], first, length), g, compute)
            for d_w, (name, _), g in zip(d_rows, grads.rows, grads_2d[len(widths) - len(grads.rows) :], strict=True)
        )
        return d_carry, d_initial, d_small, (d_w_ih, d_w_hh, d_bias, d_rows), d_xs

    zeros_in = lambda w: None if w is None else jnp.zeros(w.shape, wide)  # noqa: E731  summed in `wide`
    d_weights = (
        zeros_in(params.w_ih),
        zeros_in(params.w_hh),
        zeros_in(bias),
        tuple(zeros_in(getattr(params, name)) for name, _ in grads.rows),
    )
    d_summed = jax.tree.map(jnp.zeros_like, _summed(cell, small))
    d_xs = stored(jnp.zeros(xs.shape, wide), compute)  # dX in the compute dtype: what users get
    state = (d_final, jax.tree.map(jnp.zeros_like, d_final), d_summed, d_weights, d_xs)
    size = chunk_steps(time, -(-BACKWARD_CHUNK_ROWS // max(n, 1)) if isinstance(n, int) else 1)
    state = over_chunks(chunk, state, time, size, backward=not loop.reverse)  # against the forward loop
    d_carry, d_initial, d_small, (d_w_ih, d_w_hh, d_bias, d_rows), d_xs = state
    rows = {name: g for (name, _), g in zip(grads.rows, d_rows, strict=True)}
    d_params = d_small._replace(w_ih=d_w_ih, w_hh=d_w_hh, **rows)
    if bias is not None:
        d_params = d_params._replace(**{cast(str, cell.input_bias): d_bias})
    # Each cotangent in its primal's dtype: the compute dtype for params and xs.
    d_params = d_params._replace(
        **{k: as_dtype(v, getattr(params, k).dtype) for k, v in d_params._asdict().items() if v is not None}
    )
    d_restart = None if steps.reset is None else d_initial
    return d_params, as_dtype(loaded(d_xs, compute), xs.dtype), d_carry, d_restart


def _rows_of(layout: _Layout, saved, compute, key, first, length: int):
    """The chunk's rows of the saved value a row weight multiplies (``save[key]``, ``(N, length, k)``) as the
    left operand of its gradient's GEMM (``_gemm_rows``); a narrowed value in the compute dtype."""
    chunks = [jax.lax.dynamic_slice_in_dim(buffer, first, length, axis=1) for buffer in saved]
    rows = _saved_tree(layout, chunks[1:], loaded(chunks[0], compute), compute, widen=False)[key]
    return _gemm_rows(rows, compute)


# ----------------------------------------------------------------------------- the fused gradient, every mode
#
# jaxlstm.fused makes these three one function whose reverse mode is the fused backward pass and whose
# forward mode (jvp, jacfwd, linearize) is the JVP of the autodiff loop.


@jax.tree_util.register_pytree_node_class
class _Saved:
    """What the forward loop saved: its buffers (``hidden(carry)`` before each step first), with the
    layout (static) that maps them back to the cell's ``save``."""

    def __init__(self, buffers, layout: _Layout):
        self.buffers, self.layout = list(buffers), layout

    def tree_flatten(self):
        return tuple(self.buffers), (self.layout.treedef, self.layout.aliases, self.layout.narrowed)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children, _Layout(*aux))


def _forward(loop: Loop, diff, nondiff, save: bool):
    params, xs, carry, restart = diff
    rec_keep, steps = nondiff
    final, hs, saved, layout = fused_loop(loop, params, xs, carry, restart, steps, rec_keep, save=save)
    return (final, hs), (_Saved(saved, layout) if save else None)


def _backward(loop: Loop, diff, nondiff, saved: _Saved, d_outputs, unread):
    params, xs, _, _ = diff
    rec_keep, steps = nondiff
    d_final, d_hs = d_outputs
    # A loss on the final carry alone: hs's zeros are not read (reading an (N, T, H) buffer of zeros made
    # such a loss slower than one on every step, superlinearly in T).
    residuals = (params, xs, steps, rec_keep, saved.buffers, saved.layout)
    return fused_backward(loop, residuals, (d_final, None if unread[1] else d_hs))


def _reference(loop: Loop, diff, nondiff):
    params, xs, carry, restart = diff
    rec_keep, steps = nondiff
    return autodiff_loop(loop, params, xs, carry, restart, steps, rec_keep)


FUSED = FusedLoop(_forward, _backward, _reference)
