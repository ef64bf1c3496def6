"""The engine: one loop over time and one fused gradient, for any cell of the protocol (``jaxlstm.Cell``).

``rnn(cell, params, xs, carry, **options)`` runs a cell over whole sequences.
The cell states the elementwise math of one step (``jaxlstm.cells``); this
module owns the rest:

* the matmuls: ``x·W_ih`` (+ the cell's input bias) for a chunk of steps in
  one GEMM, ``h·W_hh`` every step, and in the backward pass ``dX``, ``dW_ih``,
  ``dW_hh`` and the input bias' gradient as GEMMs over chunks of rows;
* padding (``seq_lengths``, ``mask``): a step that doesn't count leaves the
  carry as it was, reads zeros instead of its input (so nothing in padding,
  not even NaN, reaches the gradients) and outputs zeros or the previous
  output; resets restart the carry; ``reverse`` reads each sequence from its
  own last valid step, outputs aligned with the inputs;
* ``checkpoint_every``, and the two gradients: ``"fused"`` (a
  ``jax.custom_vjp`` whose backward loop carries only the carry's cotangent
  and runs the cell's ``backward``, by default the VJP of its ``step``) and
  ``"autodiff"`` (JAX differentiates the scan).

It imports neither Flax nor any backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from . import _checks
from .cell import promote
from .cells.base import Cell
from .fused import FusedLoop, fused_call
from .timeline import (
    BACKWARD_CHUNK_ROWS,
    FORWARD_CHUNK_STEPS,
    GRADIENTS,
    MASKED_OUTPUTS,
    Steps,
    at,
    chunk_steps,
    input_chunk,
    no_cotangent,
    over_chunks,
    over_time,
    put,
    reset_steps,
    valid_steps,
    zero_padding,
)

__all__ = ["rnn", "SequenceOptions"]


@dataclass(frozen=True)
class SequenceOptions:
    """How a layer reads its sequences: the options of ``jaxlstm.rnn`` (and ``jaxlstm.gru``), checked here once.

    Attributes:
        seq_lengths: ``(*batch,)`` integers in [0, T]: steps at or past a sequence's length don't count.
        mask: ``(*batch, T)`` bools: a ``False`` step doesn't count (with ``seq_lengths``: both must allow it).
        resets: ``(*batch, T)`` bools marking the first step of a new segment: the carry restarts there.
        reset_carry: the carry a reset restarts from (default: the initial carry).
        masked_output: what a step that doesn't count outputs: ``"zeros"`` or ``"previous"``.
        reverse: read each sequence from its own last valid step back to step 0; outputs stay aligned.
        unroll: ``lax.scan``'s unroll (speed only).
        gradient: ``"fused"`` (the engine's backward pass) or ``"autodiff"`` (JAX differentiates the scan).
        checkpoint_every: keep only the carries between chunks of this many steps for the backward pass.
    """

    seq_lengths: Int[Array, "*batch"] | None = None
    mask: Bool[Array, "*batch time"] | None = None
    resets: Bool[Array, "*batch time"] | None = None
    reset_carry: Any = None
    masked_output: str = "zeros"
    reverse: bool = False
    unroll: int = 1
    gradient: str = "fused"
    checkpoint_every: int | None = None

    def __post_init__(self):
        _checks.one_of(self.masked_output, MASKED_OUTPUTS, "masked_output")
        _checks.one_of(self.gradient, GRADIENTS, "gradient")
        object.__setattr__(self, "reverse", _checks.flag(self.reverse, "reverse"))
        object.__setattr__(self, "unroll", _checks.positive_int(self.unroll, "unroll"))
        if self.checkpoint_every is not None:
            every = _checks.positive_int(self.checkpoint_every, "checkpoint_every")
            object.__setattr__(self, "checkpoint_every", every)


@dataclass(frozen=True)
class _Loop:
    """What is static about one loop: the cell and the per-step rules."""

    cell: Cell
    reverse: bool = False
    unroll: int = 1
    masked_output: str = "zeros"


# ----------------------------------------------------------------------------- the parameters' split


def _owned(cell: Cell) -> tuple[str, ...]:
    """The parameter fields the engine reads: the two weights and the cell's input bias."""
    return ("w_ih", "w_hh") + (() if cell.input_bias is None else (cell.input_bias,))


def _cell_params(cell: Cell, params):
    """``params`` as the cell sees them: ``None`` in the fields the engine owns."""
    return params._replace(**{name: None for name in _owned(cell)})


def _input_bias(cell: Cell, params):
    return None if cell.input_bias is None else getattr(params, cell.input_bias)


# ----------------------------------------------------------------------------- one step


def _tree_where(flags, new, old):
    """``new`` where ``flags`` ``(N,)`` is set, else ``old``, leaf by leaf (leaves ``(N, ·)``)."""
    return jax.tree.map(lambda a, b: jnp.where(flags[:, None], a, b), new, old)


def _add_to_hidden(cell: Cell, d_carry, dh):
    """``d_carry`` with ``dh`` added to the cotangent of ``cell.hidden(carry)``."""
    _, pullback = jax.vjp(cell.hidden, d_carry)
    return jax.tree.map(jnp.add, d_carry, pullback(dh)[0])


def _step(loop: _Loop, w_hh, small, carry, restart, from_input, steps_t: Steps):
    """One step: restart where ``reset``; ``h·W_hh``; the cell; keep the new carry only where ``valid``.

    ``from_input`` is ``x·W_ih`` (+ input bias), the input zeroed on steps that
    don't count. Returns ``(new_carry, output, carry_in, from_h)``.
    """
    cell = loop.cell
    if steps_t.reset is not None:
        carry = _tree_where(steps_t.reset, restart, carry)
    from_h = cell.hidden(carry) @ w_hh
    new = cell.step(small, from_input, from_h, carry)
    output = cell.hidden(new)
    if steps_t.valid is not None:
        keep = steps_t.valid
        skipped = cell.hidden(carry) if loop.masked_output == "previous" else jnp.zeros_like(output)
        new, output = _tree_where(keep, new, carry), jnp.where(keep[:, None], output, skipped)
    return new, output, carry, from_h


# ----------------------------------------------------------------------------- the loops


def _autodiff_loop(loop: _Loop, params, xs, carry, restart, steps: Steps):
    """The loop JAX differentiates itself: a scan over time-major steps. ``xs`` ``(N, t, D)``."""
    small, bias = _cell_params(loop.cell, params), _input_bias(loop.cell, params)
    xs_tm = jnp.moveaxis(zero_padding(xs, steps.valid), 1, 0)

    def step(carry, inputs):
        x_t, steps_t = inputs
        from_input = x_t @ params.w_ih if bias is None else x_t @ params.w_ih + bias[None]
        new, output, _, _ = _step(loop, params.w_hh, small, carry, restart, from_input, steps_t)
        return new, output

    final, hs_tm = jax.lax.scan(step, carry, (xs_tm, steps), reverse=loop.reverse, unroll=loop.unroll)
    return final, jnp.moveaxis(hs_tm, 0, 1)


def _fused_loop(loop: _Loop, params, xs, carry, restart, steps: Steps, *, save: bool):
    """The fused path's forward loop over ``xs`` ``(N, T, D)``, chunks of 4 steps per input GEMM.

    With ``save`` it also writes, per step, ``h`` before the step (for
    ``dW_hh``) and the leaves of ``cell.save``, each as its own ``(N, T, ·)``
    buffer. Returns ``(final, hs, saved_buffers, saved_treedef)``.
    """
    cell = loop.cell
    n, time, input_size = xs.shape
    small, bias = _cell_params(cell, params), _input_bias(cell, params)
    width = params.w_hh.shape[-1]
    treedef: list = []

    def one_step(carry, from_input, steps_t):
        new, output, carry_in, from_h = _step(loop, params.w_hh, small, carry, restart, from_input, steps_t)
        if not save:
            return new, (output,)
        leaves, tree = jax.tree.flatten(cell.save(small, from_input, from_h, carry_in))
        treedef[:] = [tree]
        return new, (output, cell.hidden(carry_in), *leaves)

    example = Steps(*cast(Any, (None if a is None else jax.ShapeDtypeStruct(a.shape[1:], a.dtype) for a in steps)))
    shapes = jax.eval_shape(one_step, carry, jax.ShapeDtypeStruct((n, width), xs.dtype), example)[1]
    buffers = tuple(jnp.zeros((n, time, *s.shape[1:]), s.dtype) for s in shapes)

    def chunk(state, first, length):
        carry, buffers = state
        steps_c = steps.slice(first, length)
        x_chunk = input_chunk(xs, steps_c, first, length)
        projected = x_chunk.reshape(-1, input_size) @ params.w_ih
        if bias is not None:
            projected = projected + bias[None]
        projected = projected.reshape(n, length, width)
        values = [[None] * length for _ in buffers]
        for j in reversed(range(length)) if loop.reverse else range(length):
            steps_j = Steps(*(None if a is None else a[j] for a in steps_c))
            carry, step_values = one_step(carry, projected[:, j], steps_j)
            for column, value in zip(values, step_values, strict=True):
                column[j] = value
        buffers = tuple(
            jax.lax.dynamic_update_slice_in_dim(buffer, jnp.stack(column, axis=1), first, axis=1)
            for buffer, column in zip(buffers, values, strict=True)
        )
        return carry, buffers

    size = chunk_steps(time, FORWARD_CHUNK_STEPS)
    final, buffers = over_chunks(chunk, (carry, buffers), time, size, backward=loop.reverse, unroll=loop.unroll)
    return final, buffers[0], buffers[1:], (treedef[0] if treedef else None)


def _backward_step(loop: _Loop, params, small, saved, treedef, d_hs):
    """The backward loop's step: the carry's cotangent one step back, and the step's
    gradients of the two matmuls' outputs written into the chunk's buffers."""
    cell, w_hh_t = loop.cell, params.w_hh.T
    premask = bool(jax.tree.leaves(small))  # the cell's own gradients sum over rows: rows that don't count add 0

    def step(state, inputs):
        d_carry, d_initial, d_small, grads_chunk, first = state
        t, steps_t, zero_out = inputs
        valid_t, reset_t = steps_t.valid, steps_t.reset
        saved_t = jax.tree.unflatten(treedef, [at(buffer, t) for buffer in saved])
        # d_hs None: no loss reads the outputs; the chunk's scan then hands each step zeros (zero_out)
        d_out = zero_out if d_hs is None else at(d_hs, t)
        if valid_t is None:
            d_total = _add_to_hidden(cell, d_carry, d_out)
            d_new = d_total
        else:
            keep = valid_t[:, None]
            d_total = _add_to_hidden(cell, d_carry, jnp.where(keep, d_out, jnp.zeros_like(d_out)))
            zeros = jax.tree.map(jnp.zeros_like, d_total)
            d_new = _tree_where(valid_t, d_total, zeros) if premask else d_total
        d_small_t, d_from_input, d_from_h, d_prev = cell.backward(small, saved_t, d_new)
        d_prev = _add_to_hidden(cell, d_prev, d_from_h @ w_hh_t)
        if valid_t is not None:
            keep = valid_t[:, None]
            d_from_input = jnp.where(keep, d_from_input, jnp.zeros_like(d_from_input))
            d_from_h = jnp.where(keep, d_from_h, jnp.zeros_like(d_from_h))
            d_prev = _tree_where(valid_t, d_prev, d_total)
            if loop.masked_output == "previous":
                d_prev = _add_to_hidden(cell, d_prev, jnp.where(keep, jnp.zeros_like(d_out), d_out))
        if reset_t is not None:
            zeros = jax.tree.map(jnp.zeros_like, d_prev)
            d_initial = jax.tree.map(jnp.add, d_initial, _tree_where(reset_t, d_prev, zeros))
            d_prev = _tree_where(reset_t, zeros, d_prev)
        if jax.tree.leaves(d_small_t):
            d_small = jax.tree.map(jnp.add, d_small, d_small_t)
        grads_chunk = tuple(
            put(buffer, g, t - first) for buffer, g in zip(grads_chunk, (d_from_input, d_from_h), strict=True)
        )
        return (d_prev, d_initial, d_small, grads_chunk, first), None

    return step


def _fused_backward(loop: _Loop, residuals, cotangents):
    """The backward pass, a chunk of steps at a time in backward time order: a scan over
    the chunk's steps runs the cell's ``backward`` and writes ``d from_input`` and
    ``d from_h``; then ``dX``, ``dW_ih``, ``dW_hh`` and the input bias' gradient
    follow as GEMMs over the chunk's rows."""
    params, xs, steps, saved, treedef = residuals
    h_prev, *saved = saved
    d_final, d_hs = cotangents
    cell, (n, time, input_size) = loop.cell, xs.shape
    small, bias = _cell_params(cell, params), _input_bias(cell, params)
    width = params.w_hh.shape[-1]
    step = _backward_step(loop, params, small, saved, treedef, d_hs)

    def chunk(state, first, length):
        d_carry, d_initial, d_small, (d_w_ih, d_w_hh, d_bias), d_xs = state
        steps_c = steps.slice(first, length)
        grads_chunk = tuple(jnp.zeros((n, length, width), xs.dtype) for _ in range(2))
        zero_outs = None if d_hs is not None else jnp.zeros((length, n, h_prev.shape[-1]), h_prev.dtype)
        (d_carry, d_initial, d_small, grads_chunk, _), _ = jax.lax.scan(
            step,
            (d_carry, d_initial, d_small, grads_chunk, first),
            (first + jnp.arange(length, dtype=jnp.int32), steps_c, zero_outs),
            reverse=not loop.reverse,
            unroll=loop.unroll,
        )
        x_chunk = input_chunk(xs, steps_c, first, length)
        h_chunk = jax.lax.dynamic_slice_in_dim(h_prev, first, length, axis=1)
        d_input, d_h = (g.reshape(n * length, width) for g in grads_chunk)
        # plain GEMMs on Xᵀ and H_prevᵀ written out (as jaxlstm.scan does: XLA:CPU's transposed-operand path
        # is slower)
        x_t, h_t = jax.lax.optimization_barrier(
            (x_chunk.reshape(-1, input_size).T, h_chunk.reshape(-1, h_chunk.shape[-1]).T)
        )
        d_xs = jax.lax.dynamic_update_slice_in_dim(
            d_xs, (d_input @ params.w_ih.T).reshape(n, length, input_size), first, axis=1
        )
        d_w_ih, d_w_hh = d_w_ih + x_t @ d_input, d_w_hh + h_t @ d_h
        if d_bias is not None:
            d_bias = d_bias + jnp.sum(d_input, axis=0)
        return d_carry, d_initial, d_small, (d_w_ih, d_w_hh, d_bias), d_xs

    zero_carry = jax.tree.map(jnp.zeros_like, d_final)
    d_bias = None if bias is None else jnp.zeros_like(bias)
    d_weights = (jnp.zeros_like(params.w_ih), jnp.zeros_like(params.w_hh), d_bias)
    state = (d_final, zero_carry, jax.tree.map(jnp.zeros_like, small), d_weights, jnp.zeros_like(xs))
    size = chunk_steps(time, -(-BACKWARD_CHUNK_ROWS // max(n, 1)) if isinstance(n, int) else 1)
    state = over_chunks(chunk, state, time, size, backward=not loop.reverse)
    d_carry, d_initial, d_small, (d_w_ih, d_w_hh, d_bias), d_xs = state
    d_params = d_small._replace(w_ih=d_w_ih, w_hh=d_w_hh)
    if bias is not None:
        d_params = d_params._replace(**{cast(str, cell.input_bias): d_bias})
    d_restart = None if steps.reset is None else d_initial
    return d_params, d_xs, d_carry, d_restart, Steps(*(no_cotangent(a) for a in steps))


# ----------------------------------------------------------------------------- the fused gradient, every mode
#
# jaxlstm.fused makes these three one function whose reverse mode is the fused backward pass and whose
# forward mode (jvp, jacfwd, linearize) is the JVP of the autodiff loop.


def _engine_forward(loop: _Loop, diff, steps: Steps, save: bool):
    params, xs, carry, restart = diff
    final, hs, saved, treedef = _fused_loop(loop, params, xs, carry, restart, steps, save=save)
    if not save:
        return (final, hs), None
    h_prev, *leaves = saved
    return (final, hs), (h_prev, jax.tree.unflatten(treedef, leaves))


def _engine_backward(loop: _Loop, diff, steps: Steps, saved, d_outputs, unread):
    params, xs, _, _ = diff
    h_prev, cell_saved = saved
    leaves, treedef = jax.tree.flatten(cell_saved)
    d_final, d_hs = d_outputs
    # A loss on the final carry alone: hs's zeros are not read (reading an (N, T, H) buffer of zeros made
    # such a loss slower than one on every step, superlinearly in T).
    residuals = (params, xs, steps, [h_prev, *leaves], treedef)
    return _fused_backward(loop, residuals, (d_final, None if unread[1] else d_hs))[:4]


def _engine_reference(loop: _Loop, diff, steps: Steps):
    params, xs, carry, restart = diff
    return _autodiff_loop(loop, params, xs, carry, restart, steps)


_FUSED = FusedLoop(_engine_forward, _engine_backward, _engine_reference)


# ----------------------------------------------------------------------------- the public entry


def check_cell_params(cell: Cell, params) -> None:
    """The engine's side of the contract: ``params`` a NamedTuple with ``w_ih`` ``(D, G·H)`` and ``w_hh``
    ``(H, G·H)`` (and the input bias ``(G·H,)``), then the cell's own ``check_params``."""
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a jaxlstm.Cell (e.g. jaxlstm.cells.GRU()), got {type(cell).__name__} {cell!r}")
    if not (isinstance(params, tuple) and hasattr(params, "_replace") and hasattr(params, "w_ih")):
        raise TypeError(
            f"params must be the cell's parameter NamedTuple with fields w_ih and w_hh "
            f"(e.g. {type(cell).__name__}().init_params(key, input_size, hidden_size)), got {type(params).__name__}"
        )
    for name in _owned(cell):
        _checks.floating(getattr(params, name), f"params.{name}", section="parameters")
    w_ih, w_hh, gates = cast(Any, params).w_ih, cast(Any, params).w_hh, cell.num_gates
    hidden = w_hh.shape[0] if w_hh.ndim == 2 else -1
    if w_hh.ndim != 2 or w_hh.shape[1] != gates * hidden:
        raise ValueError(
            f"params.w_hh must have shape (hidden_size, {gates} * hidden_size) for {type(cell).__name__} "
            f"({gates} gates), got {tuple(w_hh.shape)}"
        )
    if w_ih.ndim != 2 or w_ih.shape[1] != gates * hidden:
        raise ValueError(
            f"params.w_ih must have shape (input_size, {gates} * hidden_size) = (input_size, {gates * hidden}), "
            f"got {tuple(w_ih.shape)}"
        )
    bias = _input_bias(cell, params)
    if bias is not None and tuple(bias.shape) != (gates * hidden,):
        raise ValueError(f"params.{cell.input_bias} must have shape ({gates * hidden},), got {tuple(bias.shape)}")
    cell.check_params(params)


def _check_carry(cell: Cell, carry, expected, name: str) -> None:
    """``carry`` must have the structure, shapes and (floating) dtypes of the cell's zero carry ``expected``."""
    given, expected_tree = jax.tree.structure(carry), jax.tree.structure(expected)
    if given != expected_tree:
        raise TypeError(f"{name} must be {type(cell).__name__}'s carry, structured as {expected_tree}, got {given}")
    for path, leaf in jax.tree_util.tree_leaves_with_path(carry):
        _checks.floating(leaf, f"{name}{jax.tree_util.keystr(path)}", section="carry")
    for leaf, want in zip(jax.tree.leaves(carry), jax.tree.leaves(expected), strict=True):
        if tuple(leaf.shape) != tuple(want.shape):
            raise ValueError(f"{name} must have shapes {[tuple(w.shape) for w in jax.tree.leaves(expected)]} "
                             f"(*batch, size), got {[tuple(x.shape) for x in jax.tree.leaves(carry)]}")


def rnn(cell: Cell, params, xs: Float[Array, "*batch time input"], carry=None, **options):
    """Runs ``cell`` over whole sequences: one layer, one direction.

    Args:
        cell: a ``jaxlstm.Cell``, e.g. ``jaxlstm.cells.GRU()`` or one of your own (docs/cells.md).
        params: the cell's parameters (``cell.init_params(key, D, H)``): ``w_ih`` ``(D, G·H)``,
            ``w_hh`` ``(H, G·H)`` and the cell's own.
        xs: inputs ``(*batch, T, D)``, batch-first; ``*batch`` may be empty or several dims.
        carry: the initial carry, the cell's pytree of ``(*batch, size)`` arrays; zeros when ``None``.
        **options: the fields of ``jaxlstm.SequenceOptions`` (``seq_lengths``, ``mask``, ``resets``,
            ``reset_carry``, ``masked_output``, ``reverse``, ``unroll``, ``gradient``,
            ``checkpoint_every``), checked there.

    Returns:
        ``(final_carry, hs)``: each sequence's carry after its own last valid step (after step 0
        when ``reverse``), and every step's output ``cell.hidden(carry)``, ``(*batch, T, H)``.

    >>> import jax, jax.numpy as jnp, jaxlstm as jl
    >>> cell = jl.cells.GRU()
    >>> params = cell.init_params(jax.random.key(0), input_size=8, hidden_size=16)
    >>> final, hs = jl.rnn(cell, params, jnp.ones((4, 10, 8)), seq_lengths=jnp.array([10, 7, 3, 0]))
    >>> hs.shape, final.shape                          # (batch, time, hidden), (batch, hidden)
    ((4, 10, 16), (4, 16))
    """
    with jax.named_scope(f"jaxlstm.rnn.{type(cell).__name__}"):
        opts = SequenceOptions(**options)
        check_cell_params(cell, params)
        _checks.inputs(xs, cast(Any, params).w_ih.shape[0], "xs", min_rank=2, layout="(*batch, time, input)")
        batch_shape, time = tuple(xs.shape[:-2]), xs.shape[-2]
        zero = jax.eval_shape(lambda p: cell.init_carry(p, batch_shape, xs.dtype), params)
        if carry is None:
            carry = cell.init_carry(params, batch_shape, xs.dtype)
        else:
            _check_carry(cell, carry, zero, "carry")
        if opts.reset_carry is not None:
            _check_carry(cell, opts.reset_carry, zero, "reset_carry")
        seq_lengths = opts.seq_lengths
        if seq_lengths is not None:
            seq_lengths = _checks.seq_lengths(seq_lengths, batch_shape, time)
        steps = Steps(
            valid_steps(seq_lengths, opts.mask, batch_shape, time),
            reset_steps(opts.resets, batch_shape, time, reverse=opts.reverse),
        )
        restart = None if steps.reset is None else (carry if opts.reset_carry is None else opts.reset_carry)
        params, xs, carry, restart = promote(params, xs, carry, restart)
        loop = _Loop(cell, reverse=opts.reverse, unroll=opts.unroll, masked_output=opts.masked_output)
        n = math.prod(batch_shape)  # symbolic under jax.export's shape polymorphism

        def flat(tree):
            return None if tree is None else jax.tree.map(lambda a: a.reshape(n, *a.shape[len(batch_shape):]), tree)

        fused = opts.gradient == "fused"

        def run(carry, xs, steps):
            """The loop over a stretch of time, rows flattened: ``xs`` ``(N, t, D)``."""
            if fused:
                return fused_call(_FUSED, loop, (params, xs, carry, flat(restart)), steps)
            return _autodiff_loop(loop, params, xs, carry, flat(restart), steps)

        xs_flat, steps_flat = xs.reshape(n, time, xs.shape[-1]), steps.flatten_batch(len(batch_shape), n)
        final, hs = over_time(run, flat(carry), xs_flat, steps_flat, opts.checkpoint_every, opts.reverse)
        final = jax.tree.map(lambda a: a.reshape(*batch_shape, *a.shape[1:]), final)
        return final, hs.reshape(*batch_shape, time, hs.shape[-1])
