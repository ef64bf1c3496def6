"""Exact weight conversion between Flax's own LSTM cells and ``jaxlstm.LSTMParams``.

``flax.linen.LSTMCell`` and ``flax.linen.OptimizedLSTMCell`` share one
parameter tree: per gate g in i, f, g, o an input Dense ``i{g}`` (kernel
(D, H), no bias) and a hidden Dense ``h{g}`` (kernel (H, H) and bias (H,))::

    i = sigmoid(x @ ii.kernel + h @ hi.kernel + hi.bias)     # likewise f, g (tanh), o

so ``w_ih`` packs the ``i*`` kernels, ``w_hh`` the ``h*`` kernels and ``b``
the ``h*`` biases, in jaxlstm's gate order i, f, g, o. ``flax.nnx.LSTMCell``
has the same tree with ``if_`` for ``if``; ``flax.nnx.OptimizedLSTMCell``
packs the gates already: ``dense_i`` (D, 4H) and ``dense_h`` (H, 4H) with a
bias (4H,), order i, f, g, o.

Flax's cells carry ``(c, h)``, jaxlstm's ``LSTMCarry(h, c)``; the outputs
(``h``) are the same. Conversion is exact only for Flax's default
``gate_fn=sigmoid`` and ``activation_fn=tanh``.

>>> import flax.linen as nn, jax, jax.numpy as jnp, jaxlstm as jl
>>> from jaxlstm.interop import from_flax, to_flax
>>> x = jnp.ones((2, 7, 3))
>>> rnn = nn.RNN(nn.LSTMCell(features=5))
>>> variables = rnn.init(jax.random.key(0), x)
>>> params = from_flax(variables)                 # a jl.LSTMParams
>>> params.w_ih.shape, params.w_hh.shape, params.b.shape
((3, 20), (5, 20), (20,))
>>> _, hs = jl.lstm(params, x)
>>> bool(jnp.allclose(hs, rnn.apply(variables, x), atol=1e-6))
True
>>> jax.tree.map(jnp.shape, to_flax(params))["hi"]
{'bias': (5,), 'kernel': (5, 5)}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ..cell import LSTMParams
from ._common import check_finite

__all__ = ["from_flax", "to_flax"]

CELLS = ("LSTMCell", "OptimizedLSTMCell")
GATES = ("i", "f", "g", "o")


def from_flax(params, cell="LSTMCell", *, allow_nonfinite: bool = False) -> LSTMParams:
    """``jaxlstm.LSTMParams`` from the parameters of a Flax LSTM cell.

    Args:
        params: the parameters of a ``flax.linen.LSTMCell`` or
            ``OptimizedLSTMCell``: the cell's variables ``{"params": {...}}``,
            its parameter subtree ``{"ii": ..., "hi": ..., ...}``, or the
            variables of an ``nn.RNN`` over it (``{"params": {"cell": ...}}``);
            or a ``flax.nnx.LSTMCell`` / ``OptimizedLSTMCell`` (the module,
            or its ``nnx.state``).
        cell: the cell that made ``params``: ``"LSTMCell"`` or
            ``"OptimizedLSTMCell"`` (the linen cells share one tree), or the
            cell instance itself, linen or nnx, whose ``gate_fn`` and
            ``activation_fn`` are then checked to be sigmoid and tanh.
        allow_nonfinite: load NaN or ±Inf weights instead of refusing them.
            (Under ``jit`` the values are unknown and are not checked.)

    Returns:
        ``LSTMParams(w_ih (D, 4H), w_hh (H, 4H), b (4H,))`` such that
        ``jaxlstm.lstm(params, x)`` gives the outputs of ``nn.RNN(cell)``.
        A bias on the input Dense layers, if present, is added into ``b``.

    Raises:
        ValueError: a missing or misshaped entry (named), one holding NaN
            or ±Inf (named, with the count; see ``allow_nonfinite``), or a
            cell with other gate/activation functions.
    """
    from flax import nnx

    if isinstance(params, nnx.Module):
        _check_cell(params)
        params = nnx.state(params, nnx.Param)
    if isinstance(cell, str):
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(map(repr, CELLS))} or a Flax cell instance, got {cell!r}")
    else:
        _check_cell(cell)
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params) if hasattr(nnx, "to_pure_dict") else params.to_pure_dict()
    tree = _cell_tree(params)
    strict = not allow_nonfinite
    if "dense_i" in tree or "dense_h" in tree:
        kernel_i = _leaf(tree, ("dense_i", "kernel"), 2, strict)
        kernel_h = _leaf(tree, ("dense_h", "kernel"), 2, strict)
        bias = _leaf(tree, ("dense_h", "bias"), 1, strict)
        bias_i = _leaf(tree, ("dense_i", "bias"), 1, strict) if "bias" in tree["dense_i"] else None
        hidden = kernel_h.shape[0]
        _shape(kernel_i, (kernel_i.shape[0], 4 * hidden), ("dense_i", "kernel"))
        _shape(kernel_h, (hidden, 4 * hidden), ("dense_h", "kernel"))
        _shape(bias, (4 * hidden,), ("dense_h", "bias"))
        if bias_i is not None:
            _shape(bias_i, (4 * hidden,), ("dense_i", "bias"))
            bias = _finite_sum(bias, bias_i, ("dense_h", "dense_i"), strict)
        return LSTMParams(jnp.asarray(kernel_i), jnp.asarray(kernel_h), jnp.asarray(bias))

    forget = "if_" if "if_" in tree and "if" not in tree else "if"
    names = {gate: ("i" + gate if gate != "f" else forget, "h" + gate) for gate in GATES}
    hidden = _leaf(tree, ("hi", "kernel"), 2, False).shape[0]
    input_size = _leaf(tree, ("ii", "kernel"), 2, False).shape[0]
    kernels_i, kernels_h, biases = [], [], []
    for gate in GATES:
        name_i, name_h = names[gate]
        kernel_i = _shape(_leaf(tree, (name_i, "kernel"), 2, strict), (input_size, hidden), (name_i, "kernel"))
        kernel_h = _shape(_leaf(tree, (name_h, "kernel"), 2, strict), (hidden, hidden), (name_h, "kernel"))
        bias = _shape(_leaf(tree, (name_h, "bias"), 1, strict), (hidden,), (name_h, "bias"))
        if "bias" in tree[name_i]:
            bias_i = _shape(_leaf(tree, (name_i, "bias"), 1, strict), (hidden,), (name_i, "bias"))
            bias = _finite_sum(bias, bias_i, (name_h, name_i), strict)
        kernels_i.append(kernel_i)
        kernels_h.append(kernel_h)
        biases.append(bias)
    return LSTMParams(
        jnp.concatenate(kernels_i, axis=-1), jnp.concatenate(kernels_h, axis=-1), jnp.concatenate(biases, axis=-1)
    )


def to_flax(params: LSTMParams, cell="LSTMCell") -> dict:
    """The parameter tree of a Flax LSTM cell holding ``params``; ``from_flax`` inverts it exactly.

    Args:
        params: ``jaxlstm.LSTMParams``.
        cell: ``"LSTMCell"`` or ``"OptimizedLSTMCell"`` (linen; one tree for
            both), or a ``flax.nnx.LSTMCell`` / ``OptimizedLSTMCell``
            instance, for that cell's nnx layout.

    Returns:
        A plain dict: for linen, the cell's subtree ``{"ii": {"kernel"},
        ..., "hi": {"kernel", "bias"}, ...}`` — use ``{"params": tree}`` for
        ``cell.apply`` and ``{"params": {"cell": tree}}`` for ``nn.RNN(cell)``;
        for an nnx cell, its pure-dict state, to load with
        ``nnx.update(cell, tree)``.
    """
    from flax import nnx

    from .. import _checks

    _checks.params(params)
    nnx_cell = None
    if isinstance(cell, str):
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(map(repr, CELLS))} or a flax.nnx cell, got {cell!r}")
    elif isinstance(cell, nnx.Module):
        _check_cell(cell)
        nnx_cell = cell
    else:
        raise ValueError(
            f"cell must be one of {', '.join(map(repr, CELLS))} or a flax.nnx cell, got {type(cell).__name__}"
        )
    if nnx_cell is not None and hasattr(nnx_cell, "dense_i"):
        return {"dense_i": {"kernel": params.w_ih}, "dense_h": {"kernel": params.w_hh, "bias": params.b}}
    forget = "if_" if nnx_cell is not None else "if"
    kernels_i = jnp.split(params.w_ih, 4, axis=-1)
    kernels_h = jnp.split(params.w_hh, 4, axis=-1)
    biases = jnp.split(params.b, 4, axis=-1)
    tree = {}
    for gate, kernel_i, kernel_h, bias in zip(GATES, kernels_i, kernels_h, biases, strict=True):
        tree["i" + gate if gate != "f" else forget] = {"kernel": kernel_i}
        tree["h" + gate] = {"kernel": kernel_h, "bias": bias}
    return tree


def _check_cell(cell) -> None:
    """Checks that a Flax cell instance is an LSTM cell with sigmoid gates and tanh activations."""
    name = type(cell).__name__
    if name not in CELLS or not hasattr(cell, "gate_fn"):
        raise ValueError(f"cell must be a Flax LSTMCell or OptimizedLSTMCell, got {name}")
    if cell.gate_fn not in (jax.nn.sigmoid,):
        raise ValueError(
            f"{name} has gate_fn={getattr(cell.gate_fn, '__name__', cell.gate_fn)}; jaxlstm's gates use sigmoid"
        )
    if cell.activation_fn not in (jnp.tanh, jax.nn.tanh):
        raise ValueError(
            f"{name} has activation_fn={getattr(cell.activation_fn, '__name__', cell.activation_fn)}; jaxlstm uses tanh"
        )


def _cell_tree(params) -> Mapping:
    """The cell's own subtree: unwraps ``{"params": ...}`` and ``nn.RNN``'s ``{"cell": ...}``."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of Flax cell parameters, got {type(params).__name__}")
    tree = params
    for wrapper in ("params", "cell"):
        if wrapper in tree and isinstance(tree[wrapper], Mapping) and len(tree) == 1:
            tree = tree[wrapper]
    if not ({"hi", "dense_h"} & set(tree)):
        raise ValueError(
            "params is not the parameter tree of a Flax LSTM cell: expected entries 'ii', 'if', 'ig', 'io', "
            f"'hi', 'hf', 'hg', 'ho' (or 'dense_i', 'dense_h'), got {sorted(tree)}"
        )
    return tree


def _leaf(tree: Mapping, path: tuple[str, str], ndim: int, finite: bool) -> Any:
    """``tree[path[0]][path[1]]``, which must be a ``ndim``-d array (and hold no NaN or ±Inf if ``finite``)."""
    node: Any = tree
    for depth, key in enumerate(path):
        if not isinstance(node, Mapping) or key not in node:
            where = "".join(f"[{k!r}]" for k in path[: depth + 1])
            raise ValueError(f"params{where} is missing")
        node = node[key]
    if not hasattr(node, "shape") or len(node.shape) != ndim:
        where = "".join(f"[{k!r}]" for k in path)
        raise ValueError(f"params{where} must be a {ndim}-d array, got {getattr(node, 'shape', type(node).__name__)}")
    if finite:
        check_finite(node, "from_flax: params" + "".join(f"[{k!r}]" for k in path))
    return node


def _finite_sum(bias_h, bias_i, names: tuple[str, str], finite: bool):
    """The hidden and input Dense biases summed; two finite biases can still sum to ±Inf."""
    bias = bias_h + bias_i
    if finite:
        check_finite(bias, f"from_flax: params[{names[0]!r}]['bias'] + params[{names[1]!r}]['bias']")
    return bias


def _shape(array, shape: tuple[int, ...], path: tuple[str, str]):
    if tuple(array.shape) != shape:
        where = "".join(f"[{k!r}]" for k in path)
        raise ValueError(f"params{where} has shape {tuple(array.shape)}, expected {shape}")
    return array
