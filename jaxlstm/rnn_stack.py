"""Stacks of any cell: layers of one or two directions, run by the engine (``jaxlstm.rnn``), and the rules
every stack follows, written once (``jaxlstm.stacked_lstm`` runs its layers here too).

``stacked_rnn(cell, stack, xs)`` runs a stack of a cell of the protocol: layer
0 reads the D input features, later layers F (2H for a bidirectional
"concat", else H), the second direction reads each sequence backward from its
own last valid step, and between layers PyTorch's ``dropout`` drops each
layer's merged output, a fresh mask per step and row. ``run_layers`` is the
loop over layers (one compiled layer for three or more); ``merge_directions``,
``merged_size``, ``check_reverse``, ``check_nesting`` and ``layer_keys`` are the
stack's rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from . import _checks
from .cells.base import Cell
from .engine import check_carry, rnn
from .options import MERGE_MODES, RNNStackOptions, build, takes

__all__ = [
    "init_rnn_stack",
    "stacked_rnn",
    "merged_size",
    "merge_directions",
    "check_reverse",
    "check_nesting",
    "check_layer_inputs",
    "layer_keys",
    "run_layers",
]


def merged_size(hidden_size: int, num_directions: int, merge: str) -> int:
    """F, the width of a layer's output: 2H for bidirectional "concat", else H."""
    return 2 * hidden_size if num_directions == 2 and merge == "concat" else hidden_size


def merge_directions(
    forward: Float[Array, "*batch hidden"], backward: Float[Array, "*batch hidden"], merge: str = "concat"
) -> Float[Array, "*batch features"]:
    """Combines the two directions' outputs as Keras' ``Bidirectional(merge_mode=...)``.

    ``"concat"`` → ``(..., 2H)`` (forward first); ``"sum"``, ``"mul"``, ``"ave"``
    → ``(..., H)``. ``forward`` and ``backward`` must have the same shape.
    """
    _checks.one_of(merge, MERGE_MODES, "merge")
    _checks.same_shape(forward, backward, "forward", "backward", see=_checks._see("bidirectional-and-merge-modes"))
    if merge == "concat":
        return jnp.concatenate([forward, backward], axis=-1)
    if merge == "sum":
        return forward + backward
    if merge == "mul":
        return forward * backward
    return (forward + backward) / 2


def check_reverse(reverse: bool, num_directions: int, what: str = "one-direction stacks") -> None:
    """The rule, in one place: ``reverse=True`` makes a single direction read backward; with two
    directions (a bidirectional stack or layer, whose second already reads backward) it is a
    ValueError. ``what`` names the thing ``reverse`` is for in the message."""
    if reverse and num_directions == 2:
        raise ValueError(f"reverse=True is for {what}; bidirectional=True already reads backward too")


def init_rnn_stack(
    cell: Cell,
    key: PRNGKeyArray,
    input_size: int,
    hidden_size: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    merge: str = "concat",
    dtype=jnp.float32,
) -> tuple[tuple[Any, ...], ...]:
    """``[layer][direction]`` → ``cell.init_params(...)``: layer 0 reads D features, later layers F.

    >>> import jax, jaxlstm as jl
    >>> stack = jl.init_rnn_stack(jl.cells.GRU(), jax.random.key(0), 8, 16, num_layers=2, bidirectional=True)
    >>> [[p.w_ih.shape for p in layer] for layer in stack]     # layer 1 reads 2H = 32 (concat)
    [[(8, 48), (8, 48)], [(32, 48), (32, 48)]]
    """
    _check_cell(cell)
    key = _checks.prng_key(key, "key")
    input_size = _checks.positive_int(input_size, "input_size")
    hidden_size = _checks.positive_int(hidden_size, "hidden_size")
    dtype = _checks.float_dtype(dtype, "dtype")
    num_layers = _checks.positive_int(num_layers, "num_layers")
    bidirectional = _checks.flag(bidirectional, "bidirectional")
    _checks.one_of(merge, MERGE_MODES, "merge")
    num_directions = 2 if bidirectional else 1
    width = merged_size(hidden_size, num_directions, merge)
    keys = jax.random.split(key, (num_layers, num_directions))
    return tuple(
        tuple(
            cell.init_params(keys[layer, direction], input_size if layer == 0 else width, hidden_size, dtype)
            for direction in range(num_directions)
        )
        for layer in range(num_layers)
    )


def _check_cell(cell) -> None:
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a jaxlstm.Cell (e.g. jaxlstm.cells.GRU()), got {_checks.described(cell)}")


def _is_params(node) -> bool:
    """A cell's parameters (a NamedTuple), as opposed to a layer's tuple of them."""
    return isinstance(node, tuple) and hasattr(node, "_fields")


def check_nesting(stack, what: str = "the cell's params") -> tuple[int, int]:
    """``stack`` nested ``[layer][direction]``, 1 or 2 directions, the same in every layer (``what``: its
    leaves, for the message); returns ``(num_layers, num_directions)``."""
    if not isinstance(stack, Sequence) or isinstance(stack, str) or _is_params(stack) or len(stack) == 0:
        raise TypeError(
            f"stack must be a non-empty tuple of layers, each a tuple of 1 or 2 {what} "
            f"([layer][direction]), got {type(stack).__name__}"
        )
    num_directions = None
    for layer, directions in enumerate(stack):
        if _is_params(directions) or not isinstance(directions, Sequence) or len(directions) not in (1, 2):
            raise TypeError(
                f"stack[{layer}] must be a tuple of 1 (forward) or 2 (forward, backward) {what}, "
                f"got {type(directions).__name__}"
                + (f" of length {len(directions)}" if isinstance(directions, Sequence) else "")
            )
        if num_directions is None:
            num_directions = len(directions)
        elif len(directions) != num_directions:
            raise ValueError(
                f"every layer must have the same number of directions: stack[0] has {num_directions}, "
                f"stack[{layer}] has {len(directions)}"
            )
    return len(stack), cast(int, num_directions)  # set by the loop: stack is non-empty (checked above)


def check_carry_nesting(carries, num_layers: int, num_directions: int, name: str, what: str = "carries") -> None:
    """``carries`` (``None``, or nested as the stack: ``num_layers`` rows of ``num_directions``) or a ValueError."""
    if carries is None:
        return
    if (
        not isinstance(carries, Sequence)
        or len(carries) != num_layers
        or any(not isinstance(c, Sequence) or _is_params(c) or len(c) != num_directions for c in carries)
    ):
        raise ValueError(
            f"{name} must be nested like the stack, [layer][direction]: {num_layers} layers of "
            f"{num_directions} {what} each" + _checks._see("carry")
        )


def check_layer_inputs(stack, num_directions: int, merge: str) -> None:
    """Each layer after the first reads the previous layer's merged outputs: its ``w_ih`` must have
    that many rows (2R for a bidirectional "concat" stack, else R, R = ``w_hh``'s rows)."""
    for layer in range(1, len(stack)):
        below = stack[layer - 1][0].w_hh.shape[0]
        expected = merged_size(below, num_directions, merge)
        for direction, params in enumerate(stack[layer]):
            if params.w_ih.shape[0] != expected:
                reads = f"{num_directions} x {below} merged by {merge!r}" if num_directions == 2 else f"{below}"
                raise ValueError(
                    f"stack[{layer}][{direction}].w_ih has shape {tuple(params.w_ih.shape)}, but layer {layer} reads "
                    f"layer {layer - 1}'s outputs ({reads} = {expected} features): expected ({expected}, "
                    f"{params.w_ih.shape[1]})" + _checks._see("stacking")
                )


def layer_keys(dropout_key: PRNGKeyArray | None, dropout: float, num_layers: int) -> list:
    """The keys of the dropout on each layer's input (``None`` for layer 0, and for all without dropout or
    a key), split from ``dropout_key`` in layer order."""
    keys: list = [None] * num_layers
    if dropout > 0.0 and dropout_key is not None:
        for layer in range(1, num_layers):
            dropout_key, keys[layer] = jax.random.split(cast(PRNGKeyArray, dropout_key))
    return keys


@takes(RNNStackOptions)
def stacked_rnn(
    cell: Cell,
    stack,
    xs: Float[Array, "*batch time input"],
    carries=None,
    **options: Any,
) -> tuple[tuple[tuple[Any, ...], ...], Float[Array, "*batch time features"]]:
    """Runs a stack of ``cell`` layers, each one or two directions, over sequences.

    Args:
        cell: a ``jaxlstm.Cell``.
        stack: ``[layer][direction]`` → the cell's params (``init_rnn_stack``).
        xs: ``(*batch, T, D)``.
        carries: initial carries nested as ``stack``; zeros when ``None``.
        **options: the options of ``jaxlstm.options.RNNStackOptions``, documented there once:
            ``jaxlstm.rnn``'s (``seq_lengths``, ``mask``, ``resets``, ``reverse`` (one-direction stacks
            only), ...) for every layer and direction, and the stack's (``merge``, ``dropout`` between
            layers with its ``dropout_key`` and ``deterministic``, ``reset_carries`` nested as ``stack``).

    Returns:
        ``(final_carries, hs)``: final carries nested as ``stack``; ``hs`` the last layer's merged
        outputs ``(*batch, T, F)``.

    >>> import jax, jax.numpy as jnp, jaxlstm as jl
    >>> cell = jl.cells.GRU()
    >>> stack = jl.init_rnn_stack(cell, jax.random.key(0), 8, 16, num_layers=2, bidirectional=True)
    >>> finals, hs = jl.stacked_rnn(cell, stack, jnp.ones((4, 10, 8)), seq_lengths=jnp.array([10, 7, 3, 0]))
    >>> hs.shape, finals[1][1].shape                   # (batch, time, 2H); layer 1's backward carry (batch, H)
    ((4, 10, 32), (4, 16))
    """
    _check_cell(cell)
    opts = build(RNNStackOptions, options, "jaxlstm.stacked_rnn")
    num_layers, num_directions = check_nesting(stack)
    check_reverse(opts.reverse, num_directions)
    opts.require_key(opts.dropout > 0.0 and num_layers > 1)
    check_layer_inputs(stack, num_directions, opts.merge)
    _checks.inputs(xs, stack[0][0].w_ih.shape[0], "xs", min_rank=2, layout="(*batch, time, input)")
    for name, given in (("carries", carries), ("reset_carries", opts.reset_carries)):
        check_carry_nesting(given, num_layers, num_directions, name)
        for layer, row in enumerate(given or ()):
            for direction, carry in enumerate(row):  # named by place here; rnn would say "carry"
                params = stack[layer][direction]
                check_carry(cell, params, carry, tuple(xs.shape[:-2]), xs.dtype, f"{name}[{layer}][{direction}]")
    keys = layer_keys(opts.dropout_key if opts.training else None, opts.dropout, num_layers)
    per_call = {k: v for k, v in opts.fields_of(RNNStackOptions).items() if k not in _STACK_OWN}

    def run_direction(params, hs, carry, reset_carry, reverse, key):
        return rnn(cell, params, hs, carry, reset_carry=reset_carry, reverse=reverse, **per_call)

    per_layer = [
        (stack[layer], _at(carries, layer), _at(opts.reset_carries, layer), keys[layer], None)
        for layer in range(num_layers)
    ]
    return run_layers(per_layer, xs, run_direction, reverse=opts.reverse, merge=opts.merge, dropout=opts.dropout)


# The options of a stack that it applies itself, or per layer and direction: the rest is each rnn call's.
_STACK_OWN = frozenset({"merge", "dropout", "dropout_key", "deterministic", "reset_carries", "reverse"})


def _at(tree, layer: int):
    """``tree[layer]``, or ``None`` for a ``None`` tree."""
    return None if tree is None else tree[layer]


def run_layers(per_layer, xs, run_direction, *, reverse: bool, merge: str, dropout: float):
    """Runs the layers in order; ``per_layer[l]`` is layer l's ``(directions, carries,
    reset_carries, key of the dropout on its input, keys of its cells' draws)``, and
    ``run_direction(params, hs, carry, reset_carry, reverse, key)`` one direction of one layer
    (``key``: its cell's draws, or ``None``), returning ``(final_carry, outputs)``.

    Layers 1..N-1 all read F features and have the same shapes: with two or more of them, one
    ``lax.scan`` over their stacked weights compiles the layer once for all of them. Layer 0
    joins them when it reads D <= F features: zero features appended to xs and zero rows to its
    ``w_ih`` add nothing to x·W_ih, so compile time stays flat in depth.
    """
    num_layers, num_directions = len(per_layer), len(per_layer[0][0])

    def run_layer(hs, layer, directions, layer_carries, layer_resets, layer_key, keys):
        """One layer: dropout on its input, each direction over it, the merge. ``(finals, output)``."""
        if layer_key is not None:
            keep = jax.random.bernoulli(layer_key, 1.0 - dropout, hs.shape)
            dropped = jnp.where(keep, hs / (1.0 - dropout), jnp.zeros_like(hs))
            hs = dropped if isinstance(layer, int) else jnp.where(layer > 0, dropped, hs)  # scanned layer 0: no dropout
        outputs, finals = [], []
        for direction, params in enumerate(directions):
            final, out = run_direction(
                params,
                hs,
                None if layer_carries is None else layer_carries[direction],
                None if layer_resets is None else layer_resets[direction],
                reverse or direction == 1,
                None if keys is None else keys[direction],
            )
            outputs.append(out)
            finals.append(final)
        return tuple(finals), outputs[0] if num_directions == 1 else merge_directions(
            *cast(tuple[Array, Array], outputs), merge
        )

    unrolled, hs = (num_layers if num_layers < 3 else 1), xs
    if num_layers >= 3 and xs.shape[-1] <= per_layer[1][0][0].input_size:
        extra = per_layer[1][0][0].input_size - xs.shape[-1]
        padded = tuple(p._replace(w_ih=jnp.pad(p.w_ih, ((0, extra), (0, 0)))) for p in per_layer[0][0])
        layer_key = per_layer[0][3] if per_layer[1][3] is None else per_layer[1][3]  # one structure for all
        per_layer = [(padded, per_layer[0][1], per_layer[0][2], layer_key, per_layer[0][4]), *per_layer[1:]]
        hs, unrolled = jnp.pad(xs, [(0, 0)] * (xs.ndim - 1) + [(0, extra)]), 0
    final_carries = []
    for layer in range(unrolled):
        finals, hs = run_layer(hs, layer, *per_layer[layer])
        final_carries.append(finals)
    if unrolled < num_layers:
        scanned = per_layer[unrolled:]
        stacked = _stack(scanned)

        def body(hs, inputs):
            layer, rest = inputs
            finals, hs = run_layer(hs, layer, *rest)
            return hs, finals

        hs, finals = jax.lax.scan(body, hs, (jnp.arange(unrolled, num_layers), stacked))
        final_carries += _unstack(finals)
    return tuple(final_carries), hs


# ----------------------------------------------------------------------------- layers stacked for the scan
#
# XLA:CPU compiles one kernel per distinct fusion and reuses it for identical ones (24 elementwise
# ops on 24 arrays compile in 0.06 s when they are the same op, 0.33 s when each has its own
# constant). Splitting a stacked (L, ...) array into its L layers with static slices, as the
# gradient of jnp.stack does, gives L distinct kernels, since each slice's offset is a constant
# inside it: 24 kernels for an 8-layer stack's three weights. Writing and reading the layers at
# indices XLA only learns at run time gives one kernel per leaf shape for all L layers: jit(grad)
# of an 8-layer stack at (8, 64, 64) -> 128 compiled in 1.10 s instead of 1.29 (bidirectional
# 1.57 instead of 1.89), one process, interleaved, medians of 5.


def _floating(leaf) -> bool:
    return jnp.issubdtype(leaf.dtype, jnp.floating)


def _runtime_zero(x) -> Array:
    """An int32 0 that XLA can't fold: the sign bit of ``|x|``'s first element (always clear);
    ``x`` a non-empty floating array."""
    magnitude = jnp.abs(x.reshape(-1)[0])
    bits = jnp.finfo(magnitude.dtype).bits
    unsigned = {16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint64}[bits]
    return (jax.lax.bitcast_convert_type(magnitude, unsigned) >> (bits - 1)).astype(jnp.int32)


def _layer_indices(count: int, leaves) -> list[Array]:
    """``0, 1, ..., count - 1`` as separate scalars XLA can't constant-fold or relate to one another:
    the initial values of a loop that never runs (its bound, a run-time 0 read from the first
    non-empty floating array of ``leaves``, is opaque to XLA; its update is the same non-affine map
    for every index, so one kernel serves them all). Without such an array, plain constants."""
    like = next((leaf for leaf in leaves if leaf.size and _floating(leaf)), None)
    zero = jnp.int32(0) if like is None else _runtime_zero(like)

    def never(state):
        steps, *indices = state
        return (steps + 1, *(i * i + 1 for i in indices))

    _, *indices = jax.lax.while_loop(
        lambda state: state[0] < zero, never, (jnp.int32(0), *(jnp.int32(i) for i in range(count)))
    )
    return indices


def _unstack(stacked) -> list:
    """The layers of a pytree of (L, ...) arrays, as a list of L pytrees: ``[tree[i] for i in range(L)]``
    with one compiled kernel per leaf shape for all L layers."""
    leaves, tree = jax.tree.flatten(stacked)
    return [
        jax.tree.unflatten(tree, [jax.lax.dynamic_index_in_dim(leaf, i, keepdims=False) for leaf in leaves])
        for i in _layer_indices(leaves[0].shape[0], leaves)
    ]


def _stack(layers: list):
    """The list of L same-structured pytrees ``layers`` as one pytree of (L, ...) arrays, like
    ``jnp.stack`` per leaf, but written layer by layer at run-time indices: the gradient (dynamic
    slices at the same indices) then compiles to one kernel per leaf shape, as ``_unstack``."""
    columns = list(zip(*(jax.tree.leaves(layer) for layer in layers), strict=True))
    indices = _layer_indices(len(layers), [column[0] for column in columns])

    def stack(column):
        if not _floating(column[0]):  # keys and flags: no gradient to split
            return jnp.stack(column)
        buffer = jnp.zeros((len(column), *column[0].shape), column[0].dtype)
        for leaf, index in zip(column, indices, strict=True):
            buffer = jax.lax.dynamic_update_index_in_dim(buffer, leaf, index, axis=0)
        return buffer

    return jax.tree.unflatten(jax.tree.structure(layers[0]), [stack(column) for column in columns])
