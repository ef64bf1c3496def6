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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..cell import LSTMParams
import numpy as np

from ._common import check_finite, consensus, floating, warn_if_x64_disabled

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
        ValueError: a missing or misshaped entry (named: the sizes are
            those most entries agree on, so the wrong entry is the one
            named), an entry a Flax LSTM cell does not have (refused, not
            ignored), integer weights or entries of different dtypes, one
            holding NaN or ±Inf (named, with the count; see
            ``allow_nonfinite``), or a cell with other gate/activation
            functions.
    """
    from flax import nnx

    from .. import _checks

    allow_nonfinite = _checks.flag(allow_nonfinite, "allow_nonfinite")
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
    layout = _layout(tree)
    arrays = _read_entries(tree, layout, finite=not allow_nonfinite)
    _check_shapes(arrays, packed=layout.inputs is None)
    return _pack(arrays, layout, finite=not allow_nonfinite)


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


_Fields = tuple[tuple[str, ...], tuple[str, ...]]  # a Dense's (required fields, optional fields)


class _Layout(NamedTuple):
    """The entries a Flax LSTM cell's tree must have."""

    entries: dict[str, _Fields]  # name -> its fields
    inputs: dict[str, str] | None  # gate -> the name of its input Dense; None: the gates packed


def _layout(tree: Mapping) -> _Layout:
    """The layout of ``tree``, whose entries must be exactly the layout's.

    ``OptimizedLSTMCell`` (nnx) packs the gates in ``dense_i``, ``dense_h``; the other cells keep one
    Dense per gate, ``ii``, ``if`` (nnx: ``if_``), ``ig``, ``io`` and ``hi``, ..., ``ho``.
    """
    dense: _Fields = (("kernel",), ("bias",))  # an input Dense's bias is optional
    biased: _Fields = (("kernel", "bias"), ())
    if "dense_i" in tree or "dense_h" in tree:
        layout = _Layout({"dense_i": dense, "dense_h": biased}, None)
    else:
        forget = "if_" if "if_" in tree and "if" not in tree else "if"
        inputs = {gate: "i" + gate if gate != "f" else forget for gate in GATES}
        entries: dict[str, _Fields] = {name: dense for name in inputs.values()}
        entries |= {"h" + gate: biased for gate in GATES}
        layout = _Layout(entries, inputs)
    extra = sorted(set(tree) - set(layout.entries), key=str)
    if extra:
        raise ValueError(
            f"params has entries {extra} that a Flax LSTM cell does not have (expected "
            f"{', '.join(map(repr, layout.entries))}): refused rather than ignored, as they may hold weights "
            "that the conversion would drop"
        )
    return layout


def _read_entries(tree: Mapping, layout: _Layout, *, finite: bool) -> dict[tuple[str, str], Any]:
    """``(name, field)`` → array for every entry of ``layout``: present, arrays of the right rank, real
    floating, all of one dtype and (if ``finite``) without NaN or ±Inf. Anything else is named."""
    arrays: dict[tuple[str, str], Any] = {}
    for name, (required, optional) in layout.entries.items():
        node = tree.get(name)
        if not isinstance(node, Mapping):
            got = "is missing" if node is None else f"must be a dict of Dense parameters, got {type(node).__name__}"
            raise ValueError(f"params[{name!r}] {got}")
        unexpected = sorted(set(node) - set(required) - set(optional), key=str)
        if unexpected:
            allowed = ", ".join(map(repr, required + optional))
            raise ValueError(f"params[{name!r}] has unexpected entries {unexpected}; a Flax Dense has {allowed}")
        for field in required + tuple(f for f in optional if f in node):
            where = f"params[{name!r}][{field!r}]"
            if field not in node:
                raise ValueError(f"{where} is missing")
            array = node[field]
            ndim = 2 if field == "kernel" else 1
            if not hasattr(array, "shape") or not hasattr(array, "dtype") or len(array.shape) != ndim:
                got = getattr(array, "shape", type(array).__name__)
                raise ValueError(f"{where} must be a {ndim}-d array, got {got}")
            floating(array, where)
            if finite:
                check_finite(array, "from_flax: " + where)
            arrays[(name, field)] = array
    dtype = consensus({path: np.dtype(array.dtype) for path, array in arrays.items()})
    for (name, field), array in arrays.items():
        if np.dtype(array.dtype) != dtype:
            raise ValueError(
                f"params[{name!r}][{field!r}] has dtype {np.dtype(array.dtype)}, the other entries {dtype}: a Flax "
                "cell's parameters share one dtype (its param_dtype); cast them to one"
            )
    warn_if_x64_disabled(dtype, "from_flax")
    return arrays


def _check_shapes(arrays: dict[tuple[str, str], Any], *, packed: bool) -> None:
    """Checks every entry's shape against the sizes most entries agree on, so that a misshaped entry is
    the one named, not a well-shaped one read after it.

    Every entry's last axis is its output width (H per gate, 4H packed); an input kernel's first axis is
    the input size, a hidden kernel's the hidden size.
    """
    width = consensus({path: array.shape[-1] for path, array in arrays.items()})
    if packed and width % 4:
        shape = tuple(arrays[("dense_h", "kernel")].shape)
        raise ValueError(
            f"params['dense_h']['kernel'] has shape {shape}: its last axis packs the gates i, f, g, o, "
            "so its size must be a multiple of 4"
        )
    hidden = width // 4 if packed else width
    kernels_i = {path: array.shape[0] for path, array in arrays.items() if path[1] == "kernel" and _input(path[0])}
    input_size = consensus(kernels_i)
    for (name, field), array in arrays.items():
        shape = (width,) if field == "bias" else (input_size if _input(name) else hidden, width)
        if tuple(array.shape) != shape:
            raise ValueError(
                f"params[{name!r}][{field!r}] has shape {tuple(array.shape)}, expected {shape} (hidden size "
                f"{hidden} and input size {input_size}, which the other entries agree on)"
            )


def _input(name: str) -> bool:
    """Whether ``name`` is an input Dense (``ii``, ``if``, ``if_``, ..., ``dense_i``), not a hidden one."""
    return name.startswith("i") or name == "dense_i"


def _pack(arrays: dict[tuple[str, str], Any], layout: _Layout, *, finite: bool) -> LSTMParams:
    """The checked entries packed as jaxlstm's ``w_ih``, ``w_hh``, ``b`` (gates i, f, g, o); an input
    Dense's bias, if any, is added into ``b``."""
    if layout.inputs is None:
        names = [("dense_i", "dense_h")]
    else:
        names = [(layout.inputs[gate], "h" + gate) for gate in GATES]
    kernels_i, kernels_h, biases = [], [], []
    for name_i, name_h in names:
        bias = arrays[(name_h, "bias")]
        if (name_i, "bias") in arrays:
            bias = _finite_sum(bias, arrays[(name_i, "bias")], (name_h, name_i), finite)
        kernels_i.append(arrays[(name_i, "kernel")])
        kernels_h.append(arrays[(name_h, "kernel")])
        biases.append(bias)
    return LSTMParams(
        jnp.concatenate(kernels_i, axis=-1), jnp.concatenate(kernels_h, axis=-1), jnp.concatenate(biases, axis=-1)
    )


def _finite_sum(bias_h, bias_i, names: tuple[str, str], finite: bool):
    """The hidden and input Dense biases summed; two finite biases can still sum to ±Inf."""
    bias = bias_h + bias_i
    if finite:
        check_finite(bias, f"from_flax: params[{names[0]!r}]['bias'] + params[{names[1]!r}]['bias']")
    return bias
