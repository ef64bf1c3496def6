"""Layers and directions composed from ``lstm``: stacked and bidirectional LSTMs.

A stack's parameters are plain nested tuples, indexed ``[layer][direction]``,
direction 0 reading forward and direction 1 (bidirectional only) reading
backward::

    stack = ((fwd_0,), (fwd_1,))                 # 2 layers, one direction
    stack = ((fwd_0, bwd_0), (fwd_1, bwd_1))     # 2 layers, bidirectional

The carries (initial and final) mirror that nesting with ``LSTMCarry`` leaves.
Layer ``l + 1`` reads layer ``l``'s output after the two directions are merged
("concat" doubles the width to 2H, "sum", "mul" and "ave" keep H), as Keras'
``Bidirectional`` layers stacked on one another.

With a ``variant`` (``jaxlstm.LSTMVariant``: projection, peepholes, layer norm,
...) every cell is a ``VariantParams`` and runs ``jaxlstm.lstm_variant``; with
a projection each direction outputs P = ``proj_size`` features instead of H.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from . import _checks, cudnn
from .cell import LSTMCarry, LSTMParams, init_params
from .options import MERGE_MODES as MERGE_MODES
from .options import LSTMOptions, StackOptions, build, takes
from .scan import lstm
from .variants import (
    LSTMVariant,
    VariantParams,
    as_variant_params,
    check_carry,
    check_params,
    check_variant,
    init_variant_params,
)

__all__ = ["MERGE_MODES", "check_reverse", "StackParams", "StackCarry", "init_stack", "stacked_lstm", "merge_directions", "last_output"]

StackParams = tuple[tuple[LSTMParams | VariantParams, ...], ...]
"""``[layer][direction]`` → ``LSTMParams`` (``VariantParams`` with a variant); one or two directions per layer."""

StackCarry = tuple[tuple[LSTMCarry, ...], ...]
"""``[layer][direction]`` → ``LSTMCarry``, each ``h``/``c`` of shape ``(*batch, H)``."""


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


def init_stack(
    key: PRNGKeyArray,
    input_size: int,
    hidden_size: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    merge: str = "concat",
    scheme: str = "keras",
    dtype=jnp.float32,
    variant: LSTMVariant | None = None,
) -> StackParams:
    """Random weights for a stack: layer 0 reads D features, later layers F.

    Returns ``StackParams``, ``[layer][direction]`` → ``LSTMParams``; with a
    ``variant`` that is not plain, ``VariantParams`` (``jaxlstm.init_variant_params``),
    later layers reading F = 2P or P with a projection.
    """
    key = _checks.prng_key(key, "key")
    num_layers = _checks.positive_int(num_layers, "num_layers")
    bidirectional = _checks.flag(bidirectional, "bidirectional")
    check_variant(variant, allow_none=True)
    _checks.one_of(merge, MERGE_MODES, "merge")
    _checks.float_dtype(dtype, "dtype")
    num_directions = 2 if bidirectional else 1
    width = merged_size(hidden_size, num_directions, merge)
    keys = jax.random.split(key, (num_layers, num_directions))
    if variant is not None and not variant.is_plain:
        width = merged_size(variant.recurrent_size(hidden_size), num_directions, merge)
        return tuple(
            tuple(
                init_variant_params(
                    keys[layer, direction],
                    input_size if layer == 0 else width,
                    hidden_size,
                    variant,
                    scheme=scheme,
                    dtype=dtype,
                )
                for direction in range(num_directions)
            )
            for layer in range(num_layers)
        )
    return tuple(
        tuple(
            init_params(
                keys[layer, direction], input_size if layer == 0 else width, hidden_size, scheme=scheme, dtype=dtype
            )
            for direction in range(num_directions)
        )
        for layer in range(num_layers)
    )


def _check_stack(stack, variant: LSTMVariant | None = None) -> tuple[int, int]:
    """Validates the nesting; returns (num_layers, num_directions)."""
    if not isinstance(stack, Sequence) or isinstance(stack, (str, LSTMParams, VariantParams)) or len(stack) == 0:
        raise TypeError(
            "stack must be a non-empty tuple of layers, each a tuple of 1 or 2 LSTMParams "
            f"([layer][direction]), got {type(stack).__name__}"
        )
    num_directions = None
    for layer, directions in enumerate(stack):
        if (
            isinstance(directions, (LSTMParams, VariantParams))
            or not isinstance(directions, Sequence)
            or len(directions) not in (1, 2)
        ):
            raise TypeError(
                f"stack[{layer}] must be a tuple of 1 (forward) or 2 (forward, backward) LSTMParams, "
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
        for direction, params in enumerate(directions):
            if variant is None:
                _checks.params(params)
            else:
                name = f"stack[{layer}][{direction}]"
                check_params(as_variant_params(params, name), variant, name)
    return len(stack), cast(int, num_directions)  # set by the loop: stack is non-empty (checked above)


def _check_layer_inputs(stack, num_directions: int, merge: str) -> None:
    """Each layer after the first reads the previous layer's merged outputs: its ``w_ih`` must have
    that many rows (2R for a bidirectional "concat" stack, else R)."""
    for layer in range(1, len(stack)):
        below = stack[layer - 1][0].recurrent_size
        expected = below * (2 if num_directions == 2 and merge == "concat" else 1)
        for direction, params in enumerate(stack[layer]):
            if params.input_size != expected:
                reads = f"{num_directions} x {below} merged by {merge!r}" if num_directions == 2 else f"{below}"
                raise ValueError(
                    f"stack[{layer}][{direction}].w_ih has shape {tuple(params.w_ih.shape)}, but layer {layer} reads "
                    f"layer {layer - 1}'s outputs ({reads} = {expected} features): expected ({expected}, "
                    f"{params.w_ih.shape[1]})" + _checks._see("stacking")
                )


def check_stack_carry(
    carries,
    num_layers: int,
    num_directions: int,
    batch_shape: tuple[int, ...] | None,
    hidden_size: int | None,
    name: str,
    recurrent_size: int | None = None,
) -> None:
    """Checks carries nested ``[layer][direction]`` → ``LSTMCarry``, each ``(*batch, H)`` when those are given.

    With ``recurrent_size`` R (a projection's P), ``h`` must be ``(*batch, R)`` and ``c`` ``(*batch, H)``.
    """
    if carries is None:
        return
    if (
        not isinstance(carries, Sequence)
        or len(carries) != num_layers
        or any(not isinstance(c, Sequence) or isinstance(c, LSTMCarry) or len(c) != num_directions for c in carries)
    ):
        raise ValueError(
            f"{name} must be nested like the stack, [layer][direction]: {num_layers} layers of "
            f"{num_directions} LSTMCarry each" + _checks._see("carry")
        )
    if batch_shape is not None and hidden_size is not None:
        for layer, row in enumerate(carries):
            for direction, carry in enumerate(row):
                if recurrent_size is None:
                    _checks.carry(carry, batch_shape, hidden_size, f"{name}[{layer}][{direction}]")
                else:
                    check_carry(carry, batch_shape, recurrent_size, hidden_size, f"{name}[{layer}][{direction}]")


def check_reverse(reverse: bool, num_directions: int, what: str = "one-direction stacks") -> None:
    """The rule, in one place: ``reverse=True`` makes a single direction read backward; with two
    directions (a bidirectional stack or layer, whose second already reads backward) it is a
    ValueError. ``what`` names the thing ``reverse`` is for in the message."""
    if reverse and num_directions == 2:
        raise ValueError(f"reverse=True is for {what}; bidirectional=True already reads backward too")


@takes(StackOptions)
def stacked_lstm(
    stack: StackParams,
    xs: Float[Array, "*batch time input"],
    carries: StackCarry | None = None,
    **options: Any,
) -> tuple[StackCarry, Float[Array, "*batch time features"]]:
    """Runs a stack of LSTM layers, each one or two directions, over sequences.

    Args:
        stack: ``StackParams``, ``[layer][direction]`` → ``LSTMParams``
            (``VariantParams`` with a ``variant``).
        xs: ``(*batch, T, D)``, batch-first.
        carries: initial carries nested as ``stack``; zeros when ``None``.
        **options: the options of ``jaxlstm.options.StackOptions``, documented
            there once: ``jaxlstm.lstm``'s (``seq_lengths`` ``(*batch,)``,
            ``mask`` and ``resets`` ``(*batch, T)``, ``reverse``, ``variant``,
            ``backend``, ...), for every layer and direction (the backward
            direction starts at each sequence's own last valid step), and the
            stack's own (``merge``, ``dropout`` between layers,
            ``reset_carries`` nested as ``stack``). ``reverse`` is for
            one-direction stacks. The backend is decided once for the whole
            stack: on cuDNN, one call for the stack (one per layer with a
            ``merge`` other than "concat"); see docs/gpu.md. An unknown name
            is a TypeError listing the valid ones.

    Returns:
        ``(final_carries, hs)``: final carries nested as ``stack``, each
        ``(*batch, H)``; ``hs`` the last layer's merged outputs ``(*batch, T, F)``
        with F = 2H for bidirectional "concat", else H. Padded steps are zeros.
        With a projection, ``h`` and the outputs have P = ``proj_size``
        features instead of H (F = 2P or P); ``c`` keeps H.
    """
    opts = build(StackOptions, options, "jaxlstm.stacked_lstm")
    variant = opts.variant
    if variant is not None and variant.is_plain:  # every option off: the plain LSTM's own path
        _check_stack(stack, variant)
        stack = tuple(tuple(LSTMParams(*params[:3]) for params in directions) for directions in stack)
        variant = None
        opts = opts.replace(variant=None)
    num_layers, num_directions = _check_stack(stack, variant)
    if variant is not None:
        stack = tuple(tuple(as_variant_params(params) for params in directions) for directions in stack)
    check_reverse(opts.reverse, num_directions)
    _check_layer_inputs(stack, num_directions, opts.merge)
    _checks.inputs(xs, stack[0][0].input_size, "xs", min_rank=2, layout="(*batch, time, input)")
    batch_shape, hidden_size = tuple(xs.shape[:-2]), stack[0][0].hidden_size
    if opts.seq_lengths is not None:  # checked once here, for every layer and for the cuDNN path alike
        opts = opts.replace(seq_lengths=_checks.seq_lengths(opts.seq_lengths, batch_shape, xs.shape[-2]))
    recurrent_size = None if variant is None else stack[0][0].recurrent_size
    for name, given in (("carries", carries), ("reset_carries", opts.reset_carries)):
        check_stack_carry(given, num_layers, num_directions, batch_shape, hidden_size, name, recurrent_size)
    if opts.deterministic is False and opts.dropout_key is None:
        if (opts.dropout > 0.0 and num_layers > 1) or (variant is not None and variant.regularizes):
            raise ValueError("deterministic=False needs a dropout_key (a jax.random key) for the dropout masks")
    given = [c for tree in (carries, opts.reset_carries) for row in tree or () for c in row]
    dropout = cudnn.between_layers(opts, num_layers)
    if cudnn.choose_backend(opts, stack, xs, given, where="jaxlstm.stacked_lstm", dropout=dropout).backend == "cudnn":
        merge_fn = functools.partial(merge_directions, merge=opts.merge)
        return cudnn.run(
            stack, xs, carries, seq_lengths=opts.seq_lengths, reverse=opts.reverse, merge=opts.merge,
            merge_fn=merge_fn, cudnn_precision=opts.cudnn_precision,
        )  # fmt: skip
    # Every layer's jl.lstm call: the stack's LSTM options but those set per layer and direction, on XLA
    # (decided above, for the whole stack).
    per_call = {k: v for k, v in opts.fields_of(LSTMOptions).items() if k not in _PER_DIRECTION}
    per_call.update(backend="xla")
    key = opts.dropout_key if opts.training else None
    layer_keys, cell_keys = _keys(key, variant, opts.dropout, num_layers, num_directions)
    per_layer = [
        (stack[layer], _at(carries, layer), _at(opts.reset_carries, layer), layer_keys[layer], _at(cell_keys, layer))
        for layer in range(num_layers)
    ]
    return _run_layers(per_layer, xs, per_call, reverse=opts.reverse, merge=opts.merge, dropout=opts.dropout)


def _at(tree, layer: int):
    """``tree[layer]``, or ``None`` for a ``None`` tree."""
    return None if tree is None else tree[layer]


# The options of jl.lstm that stacked_lstm sets for each layer and direction itself.
_PER_DIRECTION = frozenset({"reset_carry", "reverse", "dropout_key", "deterministic"})


def _keys(dropout_key, variant: LSTMVariant | None, dropout: float, num_layers: int, num_directions: int):
    """A training call's keys, drawn from ``dropout_key`` (``None``: not training) in a fixed order:
    ``(layer_keys, cell_keys)``, the key of the dropout on layer l's input (l > 0; ``None`` without
    dropout) and, for a variant that regularizes, each cell's ``[layer][direction]`` key (else ``None``)."""
    cell_keys = None
    if variant is not None and dropout_key is not None and variant.regularizes:
        dropout_key, cells_key = jax.random.split(dropout_key)
        cell_keys = jax.random.split(cells_key, (num_layers, num_directions))
    layer_keys = [None] * num_layers
    if dropout > 0.0 and dropout_key is not None:
        for layer in range(1, num_layers):
            dropout_key, layer_keys[layer] = jax.random.split(dropout_key)
    return layer_keys, cell_keys


def _run_layers(per_layer, xs, options: dict, *, reverse: bool, merge: str, dropout: float):
    """Runs the layers in order; ``per_layer[l]`` is layer l's ``(directions, carries,
    reset_carries, key of the dropout on its input, keys of its cells' draws)``.

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
            final, out = lstm(
                params,
                hs,
                None if layer_carries is None else layer_carries[direction],
                reset_carry=None if layer_resets is None else layer_resets[direction],
                reverse=reverse or direction == 1,
                dropout_key=None if keys is None else keys[direction],
                deterministic=keys is None,
                **options,
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
    columns = list(zip(*(jax.tree.leaves(layer) for layer in layers)))
    indices = _layer_indices(len(layers), [column[0] for column in columns])

    def stack(column):
        if not _floating(column[0]):  # keys and flags: no gradient to split
            return jnp.stack(column)
        buffer = jnp.zeros((len(column), *column[0].shape), column[0].dtype)
        for leaf, index in zip(column, indices, strict=True):
            buffer = jax.lax.dynamic_update_index_in_dim(buffer, leaf, index, axis=0)
        return buffer

    return jax.tree.unflatten(jax.tree.structure(layers[0]), [stack(column) for column in columns])


def last_output(final_carries: StackCarry, merge: str = "concat") -> Float[Array, "*batch features"]:
    """The stack's output for "the last step", ``(*batch, F)``.

    The last layer's forward final ``h`` (its last valid step), merged for
    bidirectional stacks with the backward direction's final ``h`` (the one
    at step 0) — what ``torch.nn.LSTM``'s ``h_n`` and Keras'
    ``Bidirectional(..., return_sequences=False)`` give.
    """
    _checks.one_of(merge, MERGE_MODES, "merge")
    if (
        not isinstance(final_carries, Sequence)
        or isinstance(final_carries, (str, LSTMCarry))
        or not final_carries
        or not isinstance(final_carries[-1], Sequence)
        or len(final_carries[-1]) not in (1, 2)
        or not all(isinstance(carry, LSTMCarry) for carry in final_carries[-1])
    ):
        raise TypeError(
            "final_carries must be the final carries of a stack, nested [layer][direction] -> LSTMCarry "
            f"(what jl.stacked_lstm returns first), got {_checks.described(final_carries)}" + _checks._see("carry")
        )
    last = final_carries[-1]
    if len(last) == 1:
        return last[0].h
    return merge_directions(last[0].h, last[1].h, merge)
