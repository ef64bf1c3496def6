"""Exact weight conversion between Flax's ``GRUCell`` (linen and nnx) and ``jaxlstm.GRUParams``.

``flax.linen.GRUCell`` keeps one Dense per gate: input Dense layers ``ir``,
``iz``, ``in`` (kernel (D, H) and bias (H,)) and recurrent ones ``hr``, ``hz``
(kernel (H, H), no bias) and ``hn`` (kernel (H, H) and bias (H,))::

    r = σ(x·ir + b_ir + h·hr)      z = σ(x·iz + b_iz + h·hz)
    n = tanh(x·in + b_in + r ⊙ (h·hn + b_hn))      h' = (1 − z) ⊙ n + z ⊙ h

``jaxlstm.cells.GRU``'s equations with ``b_ih = [b_ir, b_iz, b_in]`` and
``b_hh = [0, 0, b_hn]``. ``flax.nnx.GRUCell`` packs the gates r, z, n already:
``dense_i`` (kernel (D, 3H), bias (3H,)) and ``dense_h`` (kernel (H, 3H), no
bias): ``b_hh = 0``.

Back to Flax, the r and z blocks of ``b_hh`` have no Dense of their own, but
r and z only ever see ``b_ih + b_hh`` there, so they are folded into the input
biases (one rounding; exact when they are zero, as after ``from_flax_gru``).
The n block is multiplied by r and cannot fold: nnx's cell has no place for
it, and ``to_flax_gru`` for an nnx cell refuses a nonzero one.

>>> import flax.linen as nn, jax, jax.numpy as jnp, jaxlstm as jl
>>> from jaxlstm.interop import from_flax_gru, to_flax_gru
>>> x = jnp.ones((2, 7, 3))
>>> rnn = nn.RNN(nn.GRUCell(features=5))
>>> variables = rnn.init(jax.random.key(0), x)
>>> params = from_flax_gru(variables)                 # a jl.GRUParams
>>> params.w_ih.shape, params.w_hh.shape, params.b_ih.shape, params.b_hh.shape
((3, 15), (5, 15), (15,), (15,))
>>> _, hs = jl.gru(params, x)
>>> bool(jnp.allclose(hs, rnn.apply(variables, x), atol=1e-6))
True
>>> sorted(to_flax_gru(params))
['hn', 'hr', 'hz', 'in', 'ir', 'iz']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..cells.gru import GRUParams
from ._common import consensus
from .flax import _Fields, _Layout, _read_entries

__all__ = ["from_flax_gru", "to_flax_gru"]

GATES = ("r", "z", "n")
_INPUT: _Fields = (("kernel", "bias"), ())
_RECURRENT: _Fields = (("kernel",), ())
_LINEN = _Layout({"ir": _INPUT, "iz": _INPUT, "in": _INPUT, "hr": _RECURRENT, "hz": _RECURRENT, "hn": _INPUT}, None)
_NNX = _Layout({"dense_i": _INPUT, "dense_h": _RECURRENT}, None)


def from_flax_gru(params, cell=None, *, allow_nonfinite: bool = False) -> GRUParams:
    """``jaxlstm.GRUParams`` from the parameters of a Flax ``GRUCell``.

    Args:
        params: a ``flax.linen.GRUCell``'s variables ``{"params": {...}}``, its parameter subtree
            ``{"ir": ..., "hn": ...}`` or an ``nn.RNN``'s variables over it
            (``{"params": {"cell": ...}}``); or a ``flax.nnx.GRUCell`` (the module or its
            ``nnx.state``).
        cell: optionally the Flax cell instance (linen or nnx), whose ``gate_fn`` and
            ``activation_fn`` are then checked to be sigmoid and tanh.
        allow_nonfinite: load NaN or ±Inf weights instead of refusing them.

    Returns:
        ``GRUParams(w_ih (D, 3H), w_hh (H, 3H), b_ih (3H,), b_hh (3H,))``, gates r, z, n, such that
        ``jaxlstm.gru(params, x)`` gives the outputs of ``nn.RNN(cell)``: linen's ``b_hh`` is
        ``[0, 0, b_hn]``, nnx's zero.

    Raises:
        ValueError: a missing or misshaped entry (named: the sizes are those most entries agree
            on), an entry a Flax GRUCell does not have (refused, not ignored), integer weights or
            entries of different dtypes, NaN or ±Inf (see ``allow_nonfinite``), or a cell with other
            gate or activation functions.
    """
    from flax import nnx

    from .. import _checks

    allow_nonfinite = _checks.flag(allow_nonfinite, "allow_nonfinite")
    if isinstance(params, nnx.Module):
        _check_cell(params)
        params = nnx.state(params, nnx.Param)
    if cell is not None:
        _check_cell(cell)
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    tree = _cell_tree(params)
    layout = _NNX if "dense_h" in tree or "dense_i" in tree else _LINEN
    extra = sorted(set(tree) - set(layout.entries), key=str)
    if extra:
        raise ValueError(
            f"params has entries {extra} that a Flax GRUCell does not have (expected "
            f"{', '.join(map(repr, layout.entries))}): refused rather than ignored, as they may hold weights "
            "that the conversion would drop"
        )
    arrays = _read_entries(tree, layout, finite=not allow_nonfinite)
    _check_shapes(arrays, packed=layout is _NNX)
    if layout is _NNX:
        w_ih, b_ih, w_hh = arrays[("dense_i", "kernel")], arrays[("dense_i", "bias")], arrays[("dense_h", "kernel")]
        return GRUParams(jnp.asarray(w_ih), jnp.asarray(w_hh), jnp.asarray(b_ih), jnp.zeros_like(b_ih))
    b_hn = jnp.asarray(arrays[("hn", "bias")])
    return GRUParams(
        jnp.concatenate([arrays[("i" + gate, "kernel")] for gate in GATES], axis=-1),
        jnp.concatenate([arrays[("h" + gate, "kernel")] for gate in GATES], axis=-1),
        jnp.concatenate([arrays[("i" + gate, "bias")] for gate in GATES], axis=-1),
        jnp.concatenate([jnp.zeros_like(b_hn), jnp.zeros_like(b_hn), b_hn], axis=-1),
    )


def to_flax_gru(params: GRUParams, cell: Any = "GRUCell") -> dict:
    """The parameter tree of a Flax ``GRUCell`` computing what ``jaxlstm.gru(params, ...)`` computes.

    Args:
        params: ``jaxlstm.GRUParams``.
        cell: ``"GRUCell"`` (linen) or a ``flax.nnx.GRUCell`` instance, for its nnx layout.

    Returns:
        A plain dict: for linen, the cell's subtree ``{"ir": {"kernel", "bias"}, ..., "hr":
        {"kernel"}, "hz": {"kernel"}, "hn": {"kernel", "bias"}}`` (``{"params": {"cell": tree}}`` for
        ``nn.RNN(cell)``); for an nnx cell, its pure-dict state ``{"dense_i": {"kernel", "bias"},
        "dense_h": {"kernel"}}``, to load with ``nnx.update(cell, tree)``. The r and z blocks of
        ``b_hh`` are added into the input biases (exact when zero); ``from_flax_gru`` inverts the
        tree bit for bit.

    Raises:
        ValueError: misshaped ``params`` (the field named), another ``cell``, or, for an nnx cell, a
            nonzero n block of ``b_hh``: nnx's ``GRUCell`` has no recurrent bias, and one inside
            ``r ⊙ (h·W_hn + b_hn)`` does not fold into another.
    """
    from flax import nnx

    _check_params(params)
    if isinstance(cell, nnx.Module):
        _check_cell(cell)
    elif cell != "GRUCell":
        raise ValueError(f"cell must be 'GRUCell' (linen) or a flax.nnx.GRUCell, got {cell!r}")
    hidden = params.w_hh.shape[0]
    b_ih, b_hh = jnp.asarray(params.b_ih), jnp.asarray(params.b_hh)
    # r and z see b_ih + b_hh only; where b_hh is 0 keep b_ih's bits (-0.0 included)
    folded = jnp.where(b_hh[: 2 * hidden] == 0, b_ih[: 2 * hidden], b_ih[: 2 * hidden] + b_hh[: 2 * hidden])
    if isinstance(cell, nnx.Module):
        b_hn = np.asarray(b_hh[2 * hidden :])
        if b_hn.any():
            raise ValueError(
                f"to_flax_gru: params.b_hh's n block (b_hh[{2 * hidden}:]) is nonzero, {np.count_nonzero(b_hn)} of "
                f"{hidden} entries; flax.nnx.GRUCell has no recurrent bias, and one multiplied by the reset gate "
                "cannot be folded into the input bias: use the linen GRUCell (its 'hn' Dense has a bias)"
            )
        bias = jnp.concatenate([folded, b_ih[2 * hidden :]], axis=-1)
        return {"dense_i": {"kernel": params.w_ih, "bias": bias}, "dense_h": {"kernel": params.w_hh}}
    kernels_i, kernels_h = jnp.split(params.w_ih, 3, axis=-1), jnp.split(params.w_hh, 3, axis=-1)
    biases_i = [*jnp.split(folded, 2, axis=-1), b_ih[2 * hidden :]]
    tree: dict[str, Any] = {}
    for gate, kernel_i, kernel_h, bias_i in zip(GATES, kernels_i, kernels_h, biases_i, strict=True):
        tree["i" + gate] = {"kernel": kernel_i, "bias": bias_i}
        tree["h" + gate] = {"kernel": kernel_h}
    tree["hn"]["bias"] = b_hh[2 * hidden :]
    return tree


def _check_params(params) -> None:
    if not isinstance(params, GRUParams):
        raise TypeError(f"params must be a jaxlstm.GRUParams, got {type(params).__name__}")
    hidden, input_size = params.w_hh.shape[0], params.w_ih.shape[0]
    shapes = {"w_ih": (input_size, 3 * hidden), "w_hh": (hidden, 3 * hidden), "b_ih": (3 * hidden,)}
    shapes["b_hh"] = (3 * hidden,)
    for field, shape in shapes.items():
        if tuple(getattr(params, field).shape) != shape:
            raise ValueError(
                f"params.{field} has shape {tuple(getattr(params, field).shape)}, expected {shape} "
                f"(hidden_size {hidden} from w_hh, input_size {input_size} from w_ih)"
            )


def _check_cell(cell) -> None:
    """Checks that a Flax cell instance is a GRUCell with sigmoid gates and tanh activations."""
    name = type(cell).__name__
    if name != "GRUCell" or not hasattr(cell, "gate_fn"):
        raise ValueError(f"cell must be a Flax GRUCell, got {name}")
    if cell.gate_fn is not jax.nn.sigmoid:
        name = getattr(cell.gate_fn, "__name__", cell.gate_fn)
        raise ValueError(f"GRUCell has gate_fn={name}; jaxlstm's uses sigmoid")
    if cell.activation_fn not in (jnp.tanh, jax.nn.tanh):
        name = getattr(cell.activation_fn, "__name__", cell.activation_fn)
        raise ValueError(f"GRUCell has activation_fn={name}; jaxlstm's uses tanh")


def _cell_tree(params) -> Mapping:
    """The cell's own subtree: unwraps ``{"params": ...}`` and ``nn.RNN``'s ``{"cell": ...}``."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of Flax GRUCell parameters, got {type(params).__name__}")
    tree = params
    for wrapper in ("params", "cell"):
        if wrapper in tree and isinstance(tree[wrapper], Mapping) and len(tree) == 1:
            tree = tree[wrapper]
    if not ({"hn", "dense_h"} & set(tree)):
        raise ValueError(
            "params is not the parameter tree of a Flax GRUCell: expected entries 'ir', 'iz', 'in', 'hr', 'hz', "
            f"'hn' (linen) or 'dense_i', 'dense_h' (nnx), got {sorted(tree, key=str)}"
        )
    return tree


def _check_shapes(arrays: dict[tuple[str, str], Any], *, packed: bool) -> None:
    """Every entry's shape against the sizes most entries agree on, so the misshaped entry is named."""
    width = consensus({path: array.shape[-1] for path, array in arrays.items()})
    if packed and width % 3:
        shape = tuple(arrays[("dense_h", "kernel")].shape)
        raise ValueError(
            f"params['dense_h']['kernel'] has shape {shape}: its last axis packs the gates r, z, n, "
            "so its size must be a multiple of 3"
        )
    hidden = width // 3 if packed else width
    is_input = {name: name.startswith("i") or name == "dense_i" for name, _ in arrays}
    kernels_i = {path: a.shape[0] for path, a in arrays.items() if path[1] == "kernel" and is_input[path[0]]}
    input_size = consensus(kernels_i)
    for (name, field), array in arrays.items():
        shape = (width,) if field == "bias" else (input_size if is_input[name] else hidden, width)
        if tuple(array.shape) != shape:
            raise ValueError(
                f"params[{name!r}][{field!r}] has shape {tuple(array.shape)}, expected {shape} (hidden size "
                f"{hidden} and input size {input_size}, which the other entries agree on)"
            )
