"""Time, for every loop over a sequence: per-step flags and the loops over chunks of steps.

The engine's loops (``jaxlstm.loops``, for any cell) run with these: the per-step data as time-major
arrays (``Steps``: which steps count, where the carry restarts, a cell's random draws), steps
read and written in place in batch-first buffers (``at``, ``put``), time cut into chunks of steps
(``over_chunks``) and, for ``checkpoint_every``, into chunks kept under ``jax.checkpoint``
(``chunked``). It imports no cell, no backend and no Flax.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int

from . import _checks

__all__ = [
    "GRADIENTS",
    "MASKED_OUTPUTS",
    "FORWARD_CHUNK_STEPS",
    "BACKWARD_CHUNK_ROWS",
    "Steps",
    "valid_steps",
    "reset_steps",
    "at",
    "input_chunk",
    "zero_padding",
    "chunk_steps",
    "put",
    "over_chunks",
    "chunked",
    "over_time",
    "no_cotangent",
]

GRADIENTS = ("fused", "autodiff")
MASKED_OUTPUTS = ("zeros", "previous")


# Steps per chunk of the fused forward loop: each chunk projects its inputs with one GEMM and
# runs its steps unrolled, reading the projection at static offsets.
FORWARD_CHUNK_STEPS = 4


# Rows (N x steps) per chunk of the backward pass: big enough for efficient GEMMs, small
# enough that each chunk's gradients stay in cache instead of one fresh (N, T, G·H) buffer.
BACKWARD_CHUNK_ROWS = 1024


class Steps(NamedTuple):
    """Per-step data, time-major ``(T, N, ...)``; ``None`` where absent.

    Attributes:
        valid: ``(T, N)`` bools, the steps that count (``seq_lengths`` and ``mask``).
        reset: ``(T, N)`` bools, the steps whose carry restarts (``resets``).
        noise: a cell's per-step random draws, a pytree of ``(T, N, ·)`` arrays (e.g. the LSTM's
            zoneout flags while training), handed to its ``step`` as ``noise=`` one step at a time.
    """

    valid: Array | None = None
    reset: Array | None = None
    noise: Any = None

    def map(self, fn) -> Steps:
        """``fn`` applied to every array (``None`` stays ``None``)."""
        return Steps(*(jax.tree.map(fn, field) for field in self))

    def slice(self, start, length: int) -> Steps:
        """Steps ``start .. start + length - 1``."""
        return self.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, length, axis=0))

    def tail(self, start: int) -> Steps:
        return self.map(lambda a: a[start:])

    def step(self, index) -> Steps:
        """Step ``index`` (static or traced): every array without its time axis."""
        return self.map(lambda a: a[index])

    def flatten_batch(self, batch_ndim: int, n: int) -> Steps:
        """Every array's batch dims ``(T, *batch, ...)`` flattened into one, ``(T, N, ...)``."""
        return self.map(lambda a: a.reshape(a.shape[0], n, *a.shape[1 + batch_ndim :]))

    def no_cotangents(self) -> Steps:
        """What a custom derivative returns for these (non-differentiable) arrays."""
        return self.map(no_cotangent)


def valid_steps(
    seq_lengths: Int[Array, "*batch"] | None,
    mask: Bool[Array, "*batch time"] | None,
    batch_shape: tuple[int, ...],
    time: int,
) -> Bool[Array, "time *batch"] | None:
    """Time-major flags of the steps that count: t < length and mask[t]; ``None`` if all do.

    ``seq_lengths`` must come checked (``_checks.seq_lengths``, which ``lstm`` runs once)."""
    valid = None
    if seq_lengths is not None:
        steps = jnp.arange(time, dtype=jnp.int32).reshape((time,) + (1,) * len(batch_shape))
        valid = steps < seq_lengths[None]
    if mask is not None:
        _checks.per_step_flags(mask, (*batch_shape, time), "mask")
        mask_tm = jnp.moveaxis(mask, -1, 0)
        valid = mask_tm if valid is None else valid & mask_tm
    return valid


def reset_steps(
    resets: Bool[Array, "*batch time"] | None, batch_shape: tuple[int, ...], time: int, *, reverse: bool
) -> Bool[Array, "time *batch"] | None:
    """Time-major flags of the steps whose carry restarts from the initial one.

    ``resets`` marks the first step of each segment. Read backward, a segment
    begins at its last step, i.e. just before the next segment's first step,
    so the flags shift by one.
    """
    if resets is None:
        return None
    _checks.per_step_flags(resets, (*batch_shape, time), "resets")
    resets_tm = jnp.moveaxis(resets, -1, 0)
    if reverse:
        resets_tm = jnp.concatenate([resets_tm[1:], jnp.zeros_like(resets_tm[:1])], axis=0)
    return resets_tm


# ----------------------------------------------------------------------------- buffers and chunks of time


def zero_padding(x, valid):
    """``x`` ``(N, t, ·)`` with the steps that don't count zeroed (``valid`` time-major ``(t, N)``, or
    ``None``): what padding holds, even NaN, must reach neither the values nor the gradients."""
    return x if valid is None else jnp.where(valid.T[..., None], x, jnp.zeros_like(x))


def input_chunk(xs, steps: Steps, first, length: int):
    """Steps ``first .. first + length - 1`` of batch-first ``xs`` ``(N, T, D)``, padding zeroed;
    ``steps`` is already that chunk's (``Steps.slice``)."""
    return zero_padding(jax.lax.dynamic_slice_in_dim(xs, first, length, axis=1), steps.valid)


def chunk_steps(time, steps: int) -> int:
    """Steps per chunk: ``steps``, fewer when T is shorter (1 when T is 0: no chunk runs), and 1 when T
    is symbolic (``jax.export``'s shape polymorphism), whose comparisons with constants can't be decided."""
    return max(1, min(time, steps)) if isinstance(time, int) else 1


def at(array, t, axis: int = 1):
    """Step ``t`` (a traced int32) of a batch-first ``(N, T, ...)`` array, ``(N, ...)`` (or of any array
    along ``axis``: ``axis=0`` for ``Steps``' time-major ones).

    Read with a one-index gather, which XLA turns back into the dynamic slice it is, not with
    ``lax.dynamic_slice``: XLA names the slices it makes itself ``dynamic-slice.N`` and JAX's own
    ``dynamic_slice.N``, and XLA:CPU's fusion emitter (jaxlib 0.10.2) names a fusion's functions after
    its instructions with ``-`` made ``_``. A fusion holding JAX's ``dynamic_slice.111`` and XLA's
    ``dynamic-slice.111`` then emits two functions of one name and fails ("Failed to translate module
    to LLVM IR"): ``jax.hessian`` of a loss with ``seq_lengths`` did, its ``vmap`` turning the
    backward loop's reads of tangents into gathers, which XLA made ``dynamic-slice``, beside the same
    loop's reads of primal values. Read as gathers, all of them come out of XLA, named by one counter.
    """
    dims = jax.lax.GatherDimensionNumbers(
        offset_dims=tuple(range(array.ndim - 1)), collapsed_slice_dims=(axis,), start_index_map=(axis,)
    )
    sizes = (*array.shape[:axis], 1, *array.shape[axis + 1 :])
    return jax.lax.gather(array, jnp.reshape(t, (1,)), dims, sizes, mode=jax.lax.GatherScatterMode.CLIP)


def put(array, value, t):
    """Writes ``value`` ``(N, ...)`` as step ``t`` of a batch-first ``(N, T, ...)`` array."""
    return jax.lax.dynamic_update_index_in_dim(array, value, t, axis=1)


def over_chunks(chunk, state, time: int, size: int, *, backward: bool, unroll: int = 1):
    """Runs ``chunk(state, first, length)`` over steps [0, time) in chunks of ``size`` steps.

    Whole chunks cover [0, num_chunks·size) and run in one ``lax.scan``; the
    remaining steps form one shorter chunk at the end. Chunks run from the first
    to the last, or from the last to the first when ``backward``.
    """
    num_chunks, remainder = divmod(time, size)
    covered = num_chunks * size

    def body(state, index):
        return chunk(state, index * size, size), None

    if remainder and backward:
        state = chunk(state, jnp.int32(covered), remainder)
    if num_chunks:  # none when time is 0
        chunks = jnp.arange(num_chunks, dtype=jnp.int32)
        state, _ = jax.lax.scan(body, state, chunks, reverse=backward, unroll=unroll)
    if remainder and not backward:
        state = chunk(state, jnp.int32(covered), remainder)
    return state


def no_cotangent(flags) -> Any:
    return None if flags is None else np.zeros(flags.shape, jax.dtypes.float0)


def over_time(run, carry, xs, steps: Steps, checkpoint_every: int | None, reverse: bool):
    """``run(carry, xs, steps)`` over the whole sequence, or, with ``checkpoint_every`` K < T, over chunks of
    K steps under ``jax.checkpoint`` (``chunked``). K needs a concrete T: a symbolic one (``jax.export``'s
    shape polymorphism) is refused with a ValueError."""
    time = xs.shape[-2]
    if checkpoint_every is not None and not isinstance(time, int):
        raise ValueError(
            f"checkpoint_every needs a concrete number of time steps, got the symbolic T = {time} "
            f"(jax.export shape polymorphism): export with a concrete T, or without checkpoint_every"
        )
    if checkpoint_every is None or checkpoint_every >= time:
        return run(carry, xs, steps)
    return chunked(run, carry, xs, steps, checkpoint_every, reverse)


def chunked(run, carry, xs, steps: Steps, chunk: int, reverse: bool):
    """Runs ``run`` over time in chunks of ``chunk`` steps, each under ``jax.checkpoint``: an outer
    scan over whole chunks, then (before, when reading backward) the remaining steps.

    Each chunk is sliced from the batch-first input inside the loop, so no
    time-major copy of the whole sequence is made.
    """
    time = xs.shape[-2]
    num_chunks, remainder = divmod(time, chunk)
    covered = num_chunks * chunk

    @jax.checkpoint  # keeps only each chunk's starting carry; slicing inside it keeps no copy of xs
    def body(carry, index):
        start = index * chunk
        x_chunk = jax.lax.dynamic_slice_in_dim(xs, start, chunk, axis=-2)
        return run(carry, x_chunk, steps.slice(start, chunk))

    def whole_chunks(carry):
        carry, hs = jax.lax.scan(body, carry, jnp.arange(num_chunks), reverse=reverse)  # (chunks, *batch, chunk, H)
        hs = jnp.moveaxis(hs, 0, -3)
        return carry, hs.reshape(*hs.shape[:-3], covered, hs.shape[-1])

    @jax.checkpoint
    def rest(carry):
        return run(carry, xs[..., covered:, :], steps.tail(covered))

    if not remainder:
        return whole_chunks(carry)
    if reverse:
        carry, hs_rest = rest(carry)
        carry, hs_main = whole_chunks(carry)
    else:
        carry, hs_main = whole_chunks(carry)
        carry, hs_rest = rest(carry)
    return carry, jnp.concatenate([hs_main, hs_rest], axis=-2)
