"""Stacks of any cell: layers of one or two directions, run by the engine (``jaxlstm.rnn``).

``stacked_rnn(cell, stack, xs)`` is ``jaxlstm.stacked_lstm`` for a cell of the
protocol: layer 0 reads the D input features, later layers F (2H for a
bidirectional "concat", else H), the second direction reads each sequence
backward from its own last valid step, and between layers PyTorch's
``dropout`` drops each layer's merged output, a fresh mask per step and row.
"""

from __future__ import annotations

from typing import Any, cast

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from . import _checks
from .cells.base import Cell
from .engine import rnn
from .stack import MERGE_MODES, merge_directions, merged_size

__all__ = ["init_rnn_stack", "stacked_rnn"]


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


def _check_stack(stack, carries, name: str) -> tuple[int, int]:
    """``stack`` as ``[layer][direction]``, one or two directions in every layer; returns their counts."""
    if not isinstance(stack, (tuple, list)) or not stack or not all(isinstance(d, (tuple, list)) for d in stack):
        raise TypeError(f"{name} must be nested [layer][direction] -> the cell's params (init_rnn_stack), "
                        f"got {type(stack).__name__}")
    num_directions = len(stack[0])
    if num_directions not in (1, 2) or any(len(d) != num_directions for d in stack):
        raise ValueError(f"every layer of {name} must have the same 1 or 2 directions, got "
                         f"{[len(d) for d in stack]}")
    for given, label in ((carries, "carries"),):
        if given is not None and (len(given) != len(stack) or any(len(c) != num_directions for c in given)):
            raise ValueError(f"{label} must be nested as {name}: {len(stack)} layers of {num_directions} directions")
    return len(stack), num_directions


def _check_layer_inputs(stack, num_directions: int, merge: str) -> None:
    """Every layer after the first must read the previous layer's merged width F."""
    width = merged_size(stack[0][0].w_hh.shape[0], num_directions, merge)
    for layer, directions in enumerate(stack[1:], start=1):
        for direction, params in enumerate(directions):
            if params.w_ih.shape[0] != width:
                raise ValueError(
                    f"stack[{layer}][{direction}].w_ih reads {params.w_ih.shape[0]} features, but layer "
                    f"{layer - 1}'s outputs merged with {merge!r} have {width} (init_rnn_stack with the same merge)"
                )


def stacked_rnn(
    cell: Cell,
    stack,
    xs: Float[Array, "*batch time input"],
    carries=None,
    *,
    merge: str = "concat",
    dropout: float = 0.0,
    dropout_key: PRNGKeyArray | None = None,
    deterministic: bool | None = None,
    reset_carries=None,
    **options,
) -> tuple[tuple[tuple[Any, ...], ...], Float[Array, "*batch time features"]]:
    """Runs a stack of ``cell`` layers, each one or two directions, over sequences.

    Args:
        cell: a ``jaxlstm.Cell``.
        stack: ``[layer][direction]`` → the cell's params (``init_rnn_stack``).
        xs: ``(*batch, T, D)``.
        carries: initial carries nested as ``stack``; zeros when ``None``.
        merge: how two directions' outputs combine: "concat" (2H), "sum", "mul", "ave" (H).
        dropout: PyTorch's ``dropout``: the rate of dropout on every layer's output but the last.
        dropout_key: the key of those masks. ``deterministic``: ``None`` (default) drops exactly
            when a key is given; ``True`` never; ``False`` requires a key.
        reset_carries: what each layer and direction restarts from at ``resets``, nested as ``stack``.
        **options: the sequence options of ``jaxlstm.SequenceOptions``, for every layer and
            direction (``reverse`` only for one-direction stacks).

    Returns:
        ``(final_carries, hs)``: final carries nested as ``stack``; ``hs`` the last layer's merged
        outputs ``(*batch, T, F)``.

    >>> import jax, jax.numpy as jnp, jaxlstm as jl
    >>> cell = jl.cells.GRU()
    >>> stack = jl.init_rnn_stack(cell, jax.random.key(0), 8, 16, num_layers=2, bidirectional=True)
    >>> finals, hs = jl.stacked_rnn(cell, stack, jnp.ones((4, 10, 8)), seq_lengths=jnp.array([10, 7, 3, 0]))
    >>> hs.shape, finals[1][1].shape                   # (batch, T, 2H); layer 1's backward carry (batch, H)
    ((4, 10, 32), (4, 16))
    """
    _check_cell(cell)
    dropout_key = _checks.prng_key(dropout_key, "dropout_key", allow_none=True)
    num_layers, num_directions = _check_stack(stack, carries, "stack")
    _check_stack(stack, reset_carries, "stack")
    _checks.one_of(merge, MERGE_MODES, "merge")
    dropout = _checks.rate(dropout, "dropout")
    deterministic = None if deterministic is None else _checks.flag(deterministic, "deterministic")
    reverse = _checks.flag(options.pop("reverse", False), "reverse")
    if reverse and num_directions == 2:
        raise ValueError("reverse=True is for one-direction stacks; a bidirectional stack already reads backward")
    if deterministic is False and dropout_key is None and dropout > 0.0 and num_layers > 1:
        raise ValueError("deterministic=False needs a dropout_key (a jax.random key) for the dropout masks")
    training = dropout_key is not None and deterministic is not True and dropout > 0.0
    _check_layer_inputs(stack, num_directions, merge)
    hs, final_carries = xs, []
    for layer, directions in enumerate(stack):
        if layer > 0 and training:
            dropout_key, layer_key = jax.random.split(cast(PRNGKeyArray, dropout_key))
            keep = jax.random.bernoulli(layer_key, 1.0 - dropout, hs.shape)
            hs = jnp.where(keep, hs / (1.0 - dropout), jnp.zeros_like(hs))
        outputs, finals = [], []
        for direction, params in enumerate(directions):
            final, out = rnn(
                cell,
                params,
                hs,
                None if carries is None else carries[layer][direction],
                reset_carry=None if reset_carries is None else reset_carries[layer][direction],
                reverse=reverse or direction == 1,
                **options,
            )
            outputs.append(out)
            finals.append(final)
        hs = outputs[0] if num_directions == 1 else merge_directions(outputs[0], outputs[1], merge)
        final_carries.append(tuple(finals))
    return tuple(final_carries), hs
