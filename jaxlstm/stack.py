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
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from . import _checks, cudnn
from .cell import LSTMCarry, LSTMParams, init_params
from .options import MERGE_MODES as MERGE_MODES
from .options import LSTMOptions, StackOptions, build, takes
from .rnn_stack import _at, check_carry_nesting, check_layer_inputs, check_nesting, run_layers
from .rnn_stack import check_reverse as check_reverse
from .rnn_stack import layer_keys as stack_layer_keys
from .rnn_stack import merge_directions as merge_directions
from .rnn_stack import merged_size as merged_size
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

__all__ = [
    "MERGE_MODES",
    "check_reverse",
    "StackParams",
    "StackCarry",
    "init_stack",
    "stacked_lstm",
    "merge_directions",
    "last_output",
]

StackParams = tuple[tuple[LSTMParams | VariantParams, ...], ...]
"""``[layer][direction]`` → ``LSTMParams`` (``VariantParams`` with a variant); one or two directions per layer."""

StackCarry = tuple[tuple[LSTMCarry, ...], ...]
"""``[layer][direction]`` → ``LSTMCarry``, each ``h``/``c`` of shape ``(*batch, H)``."""


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
    """Validates the nesting (``jaxlstm.rnn_stack.check_nesting``) and each cell's parameters; returns
    (num_layers, num_directions)."""
    counts = check_nesting(stack, "LSTMParams")
    for layer, directions in enumerate(stack):
        for direction, params in enumerate(directions):
            if variant is None:
                _checks.params(params)
            else:
                name = f"stack[{layer}][{direction}]"
                check_params(as_variant_params(params, name), variant, name)
    return counts


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
    check_carry_nesting(carries, num_layers, num_directions, name, "LSTMCarry")
    if batch_shape is not None and hidden_size is not None:
        for layer, row in enumerate(carries):
            for direction, carry in enumerate(row):
                if recurrent_size is None:
                    _checks.carry(carry, batch_shape, hidden_size, f"{name}[{layer}][{direction}]")
                else:
                    check_carry(carry, batch_shape, recurrent_size, hidden_size, f"{name}[{layer}][{direction}]")


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
    check_layer_inputs(stack, num_directions, opts.merge)
    _checks.inputs(xs, stack[0][0].input_size, "xs", min_rank=2, layout="(*batch, time, input)")
    batch_shape, hidden_size = tuple(xs.shape[:-2]), stack[0][0].hidden_size
    if opts.seq_lengths is not None:  # checked once here, for every layer and for the cuDNN path alike
        opts = opts.replace(seq_lengths=_checks.seq_lengths(opts.seq_lengths, batch_shape, xs.shape[-2]))
    recurrent_size = None if variant is None else stack[0][0].recurrent_size
    for name, given in (("carries", carries), ("reset_carries", opts.reset_carries)):
        check_stack_carry(given, num_layers, num_directions, batch_shape, hidden_size, name, recurrent_size)
    opts.require_key((opts.dropout > 0.0 and num_layers > 1) or (variant is not None and variant.regularizes))
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

    def run_direction(params, hs, carry, reset_carry, reverse, key):
        return lstm(
            params, hs, carry, reset_carry=reset_carry, reverse=reverse, dropout_key=key, deterministic=key is None,
            **per_call,
        )  # fmt: skip

    return run_layers(per_layer, xs, run_direction, reverse=opts.reverse, merge=opts.merge, dropout=opts.dropout)


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
    return stack_layer_keys(dropout_key, dropout, num_layers), cell_keys


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
