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
from jaxtyping import Array, Bool, Float, Int

from . import _checks
from .cell import promote
from .cells.base import Cell
from .fused import fused_call
from .loops import FUSED, Loop, autodiff_loop, input_bias, owned
from .precision import accumulation_dtype, as_dtype
from .timeline import GRADIENTS, MASKED_OUTPUTS, Steps, over_time, reset_steps, valid_steps

__all__ = ["rnn", "run_cell", "SequenceOptions", "SequenceData", "SequenceSettings", "check_cell_params", "check_carry"]


@dataclass(frozen=True)
class SequenceData:
    """What a call's sequences are: the per-call arrays of ``SequenceOptions`` (a module's call takes them as
    arguments; they are not a layer's fields).

    Attributes:
        seq_lengths: ``(*batch,)`` integers in [0, T]: steps at or past a sequence's length leave its
            carry unchanged and output zeros. Concrete lengths outside [0, T] raise a ValueError; traced
            ones (inside ``jit``) can't be inspected and are clamped to [0, T].
        mask: ``(*batch, T)`` bools, any pattern: a ``False`` step leaves the carry unchanged. With
            ``seq_lengths``, a step counts when both allow it.
        resets: ``(*batch, T)`` bools marking the first step of a new segment (several sequences packed
            in one row): the carry restarts from ``reset_carry`` there (a layer module's call: from its
            ``initial_carry``, else the learned or zero carry). With ``reverse``, each segment is read
            backward on its own.
        reset_carry: the carry a reset restarts from, ``(*batch, ·)`` leaves; by default the initial carry.
    """

    seq_lengths: Int[Array, "*batch"] | None = None
    mask: Bool[Array, "*batch time"] | None = None
    resets: Bool[Array, "*batch time"] | None = None
    reset_carry: Any = None


@dataclass
class SequenceSettings:
    """How a layer reads its sequences: the settings of ``SequenceOptions``, which a layer holds as fields
    (``jaxlstm.layer.RecurrentLayerFields`` inherits them). Declared here once, checked by ``SequenceOptions``;
    not frozen, since linen's modules (non-frozen dataclasses) inherit them.

    Attributes:
        masked_output: what a step that doesn't count outputs: ``"zeros"``, or ``"previous"``, the
            carry's ``h``, i.e. the last counted step's output (Keras' standalone layers with a mask).
        reverse: read each sequence from its own last valid step back to step 0. Outputs stay aligned
            with the inputs (``hs[..., t, :]`` belongs to ``xs[..., t, :]``), as PyTorch's packed sequences
            and Keras' masked ``go_backwards`` give.
        unroll: iterations of the compiled loop to unroll (``lax.scan``'s); speed only, results do not
            change. The fused path's forward loop already runs 4 steps per iteration.
        gradient: ``"fused"`` (the engine's backward pass over the whole sequence, faster) or
            ``"autodiff"`` (JAX differentiates the scan). Values and gradients agree to float rounding.
            Forward mode, second derivatives and ``jax.export`` work on both (docs/performance.md).
        checkpoint_every: for very long sequences, cut time into chunks of this many steps and keep only
            the carries between chunks for the backward pass (``jax.checkpoint``): each chunk's forward
            runs again during the backward pass. Memory for training drops from O(T) activations to
            O(T / checkpoint_every + checkpoint_every); values and gradients do not change.
    """

    masked_output: str = "zeros"
    reverse: bool = False
    unroll: int = 1
    gradient: str = "fused"
    checkpoint_every: int | None = None


# Frozen over the non-frozen SequenceSettings: allowed at run time since SequenceData is frozen; pyright refuses it.
@dataclass(frozen=True)  # pyright: ignore[reportGeneralTypeIssues]
class SequenceOptions(SequenceSettings, SequenceData):
    """How a layer reads its sequences: the options of ``jaxlstm.rnn``, ``jaxlstm.gru`` and ``jaxlstm.lstm``
    (and of their stacks and modules), declared, documented and checked here once: the per-call arrays
    of ``SequenceData`` (``seq_lengths``, ``mask``, ``resets``, ``reset_carry``) and the settings of
    ``SequenceSettings`` (``masked_output``, ``reverse``, ``unroll``, ``gradient``, ``checkpoint_every``),
    each documented there.

    >>> SequenceOptions(reverse=True, checkpoint_every=8).checkpoint_every
    8
    """

    def __post_init__(self):
        _checks.one_of(self.masked_output, MASKED_OUTPUTS, "masked_output")
        _checks.one_of(self.gradient, GRADIENTS, "gradient")
        object.__setattr__(self, "reverse", _checks.flag(self.reverse, "reverse"))
        object.__setattr__(self, "unroll", _checks.positive_int(self.unroll, "unroll"))
        if self.checkpoint_every is not None:
            every = _checks.positive_int(self.checkpoint_every, "checkpoint_every")
            object.__setattr__(self, "checkpoint_every", every)


# ----------------------------------------------------------------------------- the public entry


def check_cell_params(cell: Cell, params) -> None:
    """The engine's side of the contract: ``params`` a NamedTuple with ``w_ih`` ``(D, G·H)`` and ``w_hh``
    ``(R, G·H)`` (and the input bias ``(G·H,)``), then the cell's own ``check_params``. R, the size of
    ``cell.hidden(carry)`` that ``h·W_hh`` reads, is H unless the cell has ``row_weights`` (the LSTM's
    projection ``W_hr`` ``(H, P)``: R = P), whose shapes its ``check_params`` checks."""
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a jaxlstm.Cell (e.g. jaxlstm.cells.GRU()), got {type(cell).__name__} {cell!r}")
    if not (isinstance(params, tuple) and hasattr(params, "_replace") and hasattr(params, "w_ih")):
        raise TypeError(
            f"params must be the cell's parameter NamedTuple with fields w_ih and w_hh "
            f"(e.g. {type(cell).__name__}().init_params(key, input_size, hidden_size)), got {type(params).__name__}"
        )
    for name in owned(cell):
        _checks.floating(getattr(params, name), f"params.{name}", section="parameters")
    w_ih, w_hh, gates = cast(Any, params).w_ih, cast(Any, params).w_hh, cell.num_gates
    projected = bool(cell.row_weights)  # R is the row weights' output size, which the cell checks
    hidden = -1 if w_hh.ndim != 2 else (w_hh.shape[1] // gates if projected else w_hh.shape[0])
    if w_hh.ndim != 2 or w_hh.shape[1] != gates * hidden:
        rows = "recurrent_size" if projected else "hidden_size"
        raise ValueError(
            f"params.w_hh must have shape ({rows}, {gates} * hidden_size) for {type(cell).__name__} "
            f"({gates} gates), got {tuple(w_hh.shape)}"
        )
    if w_ih.ndim != 2 or w_ih.shape[1] != gates * hidden:
        raise ValueError(
            f"params.w_ih must have shape (input_size, {gates} * hidden_size) = (input_size, {gates * hidden}), "
            f"got {tuple(w_ih.shape)}"
        )
    bias = input_bias(cell, params)
    if bias is not None and tuple(bias.shape) != (gates * hidden,):
        raise ValueError(f"params.{cell.input_bias} must have shape ({gates * hidden},), got {tuple(bias.shape)}")
    cell.check_params(params)


def check_carry(cell: Cell, params, carry, batch_shape: tuple[int, ...], dtype, name: str) -> None:
    """``carry`` (named ``name`` in the errors) must have the structure, shapes and floating dtypes of the
    cell's zero carry for ``params`` and ``batch_shape``."""
    _check_carry(cell, carry, jax.eval_shape(lambda p: cell.init_carry(p, batch_shape, dtype), params), name)


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
            ``w_hh`` ``(H, G·H)`` (``(P, G·H)`` under an LSTM's projection) and the cell's own.
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
        dtypes = jax.tree.map(lambda a: a.dtype, carry)
        loop = Loop(cell, reverse=opts.reverse, unroll=opts.unroll, masked_output=opts.masked_output)
        final, hs = run_cell(loop, params, xs, carry, restart, steps, None, opts.gradient, opts.checkpoint_every)
        return jax.tree.map(as_dtype, final, dtypes), hs


def run_cell(loop: Loop, params, xs, carry, restart, steps: Steps, rec_keep, gradient: str, checkpoint_every):
    """The loop of ``loop.cell`` over checked, promoted arguments: what ``rnn`` and ``jaxlstm.lstm`` run.

    ``xs`` ``(*batch, T, D)``; ``carry`` and ``restart`` the cell's carries ``(*batch, ·)``; ``steps``
    time-major ``(T, *batch, ·)``; ``rec_keep`` the recurrent dropout mask ``(*batch, H)`` or ``None``.
    The rows are flattened to one batch dim N for the loop, the carry kept in at least the accumulation
    dtype. Returns ``(final, hs)``: the final carry in that dtype, ``hs`` ``(*batch, T, H)`` in ``xs``'s.
    """
    batch_shape, time = tuple(xs.shape[:-2]), xs.shape[-2]
    n = math.prod(batch_shape)  # symbolic under jax.export's shape polymorphism
    wide = accumulation_dtype(xs.dtype)

    def flat(tree):
        """Rows flattened, ``(N, ·)``, each leaf at least ``wide`` (the loop's dtype)."""
        if tree is None:
            return None
        return jax.tree.map(lambda a: as_dtype(a.reshape(n, *a.shape[len(batch_shape) :]), _wider(a.dtype, wide)), tree)

    restart_flat = flat(restart)
    rec_keep_flat = None if rec_keep is None else rec_keep.reshape(n, rec_keep.shape[-1])

    def run(carry, xs, steps):
        """The loop over a stretch of time, rows flattened: ``xs`` ``(N, t, D)``."""
        if gradient == "fused":
            return fused_call(FUSED, loop, (params, xs, carry, restart_flat), (rec_keep_flat, steps))
        return autodiff_loop(loop, params, xs, carry, restart_flat, steps, rec_keep_flat)

    xs_flat, steps_flat = xs.reshape(n, time, xs.shape[-1]), steps.flatten_batch(len(batch_shape), n)
    final, hs = over_time(run, flat(carry), xs_flat, steps_flat, checkpoint_every, loop.reverse)
    final = jax.tree.map(lambda a: a.reshape(*batch_shape, *a.shape[1:]), final)
    return final, as_dtype(hs.reshape(*batch_shape, time, hs.shape[-1]), xs.dtype)


def _wider(dtype, wide):
    with jax.numpy_dtype_promotion("standard"):
        return jax.numpy.promote_types(dtype, wide)
