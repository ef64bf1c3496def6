"""An ``nn.LSTM``'s state dict read as a ``jl.LSTM`` and its variables (``from_torch``'s core).

``StateDictLSTM`` holds the tensors under one prefix, each read once as a checked NumPy array
with errors that name its key; ``_read_sizes`` reads hidden_size, proj_size and input_size as most
tensors agree on them; ``_read_cell`` makes one cell's jaxlstm params (transposed, the two biases
summed); ``convert`` does the whole state dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from .. import _checks
from ._common import check_finite, consensus, floating, warn_if_x64_disabled
from ._torch_keys import find_prefix, weight_keys
from ._torch_tensors import jax_array, to_numpy

__all__ = ["StateDictLSTM", "convert"]


def convert(state_dict, prefix: str | None, dropout: float, source: str, allow_nonfinite: bool):
    """``from_torch_state_dict``'s ``(module, variables, unused keys)``."""
    from ..linen import LSTM, cell_name
    from ..variants import LSTMVariant

    if not isinstance(state_dict, Mapping):
        raise ValueError(
            f"{source}: expected a state dict (a mapping of key -> tensor, as nn.LSTM.state_dict()), "
            f"got {type(state_dict).__name__}"
        )
    keys = [k for k in state_dict if isinstance(k, str)]
    if prefix is None:
        prefix = find_prefix(keys, source)
    entries = weight_keys(keys, prefix, source)
    weights = StateDictLSTM(state_dict, prefix, entries, source, allow_nonfinite)
    sizes = _read_sizes(weights)
    warn_if_x64_disabled(sizes.dtype, source)
    params = {
        cell_name(layer, direction): _read_cell(weights, sizes, layer, direction)
        for layer in range(weights.num_layers)
        for direction in range(weights.num_directions)
    }
    module = LSTM(
        features=sizes.hidden,
        num_layers=weights.num_layers,
        bidirectional=weights.bidirectional,
        dropout=_checks.rate(dropout, "dropout"),
        init_scheme="torch",
        param_dtype=params["layer_0"]["w_ih"].dtype,
        variant=None if sizes.proj_size is None else LSTMVariant(proj_size=sizes.proj_size),
    )
    used = set(entries.values())
    return module, {"params": params}, [key for key in state_dict if key not in used]


class StateDictLSTM:
    """The ``nn.LSTM`` weights of a state dict under one prefix: the configuration their keys
    imply, and each tensor as a NumPy array, checked, with errors that name its key."""

    def __init__(
        self,
        state_dict: Mapping,
        prefix: str,
        entries: dict[tuple[str, str, int, bool], str],
        source: str,
        allow_nonfinite: bool,
    ):
        self.state_dict, self.prefix, self.entries, self.source = state_dict, prefix, entries, source
        self.allow_nonfinite = allow_nonfinite
        self.arrays: dict[str, np.ndarray] = {}
        self.num_layers = 1 + max(layer for _, _, layer, _ in entries)
        self.bidirectional = any(reverse for *_, reverse in entries)
        self.bias = any(kind == "bias" for kind, *_ in entries)
        self.projected = any(which == "hr" for _, which, _, _ in entries)
        self.num_directions = 2 if self.bidirectional else 1

    def tensor(self, kind: str, which: str, layer: int, direction: int) -> tuple[str, np.ndarray]:
        """The key and the floating, finite NumPy array of e.g. ``weight_ih_l0_reverse`` (read once)."""
        source = self.source
        name = f"{self.prefix}{kind}_{which}_l{layer}" + ("_reverse" if direction else "")
        if name in self.arrays:
            return name, self.arrays[name]
        if (kind, which, layer, bool(direction)) not in self.entries:
            raise ValueError(
                f"{source}: missing key {name!r} (the state dict has keys for num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, bias={self.bias})"
            )
        value = self.state_dict[name]
        where = f"{source}: {name!r}"
        try:
            array = to_numpy(value, where)
        except TypeError as error:
            raise ValueError(f"{where} is a {type(value).__name__}, not a tensor") from error
        self.arrays[name] = check_finite(floating(array, where), where, self.allow_nonfinite)
        return name, self.arrays[name]

    def shaped(self, kind: str, which: str, layer: int, direction: int, shape: tuple[int, ...], what: str):
        """``tensor(...)``'s array, which must have ``shape`` (``what`` names its axes in the error)."""
        name, array = self.tensor(kind, which, layer, direction)
        if array.shape != shape:
            raise ValueError(f"{self.source}: {name!r} has shape {tuple(array.shape)}, expected {shape} ({what})")
        return array


class _Sizes(NamedTuple):
    hidden: int
    proj_size: int | None  # None: no projection
    input_size: int
    dtype: np.dtype  # layer 0's w_ih's, the parameters' dtype

    @property
    def recurrent(self) -> int:
        """The size of h: proj_size with a projection, else hidden."""
        return self.hidden if self.proj_size is None else self.proj_size


def _read_sizes(weights: StateDictLSTM) -> _Sizes:
    """hidden_size, proj_size and input_size as most of the LSTM's tensors agree on them, and the dtype
    (layer 0's weight_ih's).

    Sizes read from one tensor would make a misshaped one blame its well-shaped neighbours; agreed on by
    all, they make ``_read_cell`` name the misshaped tensor itself.
    """
    source = weights.source
    shapes, names = {}, {}
    for entry in weights.entries:
        kind, which, layer, reverse = entry
        name, array = weights.tensor(kind, which, layer, int(reverse))
        ndim = 1 if kind == "bias" else 2
        if array.ndim != ndim:
            raise ValueError(f"{source}: {name!r} has shape {tuple(array.shape)}, expected a {ndim}-d tensor")
        shapes[entry], names[entry] = array.shape, name
    # Each tensor's share of 4 * hidden_size: the first axis, or 4x weight_hr's second (P, H).
    gates = consensus({e: 4 * shape[1] if e[1] == "hr" else shape[0] for e, shape in shapes.items()})
    if gates % 4:
        entry = next(e for e, shape in shapes.items() if e[1] != "hr" and shape[0] == gates)
        raise ValueError(
            f"{source}: {names[entry]!r} has shape {tuple(shapes[entry])}: its first axis packs the gates "
            "i, f, g, o, so its size must be 4 * hidden_size"
        )
    hidden, proj_size = gates // 4, None
    if weights.projected:  # weight_hr (P, H) first: it defines proj_size, and wins a tie with weight_hh (4H, P)
        votes = {e: shape[0] for e, shape in shapes.items() if e[1] == "hr"}
        votes |= {e: shape[1] for e, shape in shapes.items() if e[:2] == ("weight", "hh")}
        proj_size = consensus(votes)
        if not 0 < proj_size < hidden:
            entry = next(e for e in votes if e[1] == "hr")
            raise ValueError(
                f"{source}: {names[entry]!r} has shape {tuple(shapes[entry])}, expected (proj_size, hidden_size) "
                "with proj_size < hidden_size"
            )
    inputs = {e: shape[1] for e, shape in shapes.items() if e[:3] == ("weight", "ih", 0)}
    if len(set(inputs.values())) > 1:  # two directions, no majority: name both
        shown = ", ".join(f"{names[e]!r} has shape {tuple(shapes[e])}" for e in inputs)
        raise ValueError(f"{source}: the two directions of layer 0 read different input sizes: {shown}")
    input_size = consensus(inputs)
    _, w_ih0 = weights.tensor("weight", "ih", 0, 0)
    return _Sizes(hidden, proj_size, input_size, w_ih0.dtype)


def _read_cell(weights: StateDictLSTM, sizes: _Sizes, layer: int, direction: int) -> dict:
    """One cell's jaxlstm params ``{"w_ih", "w_hh", "b"[, "w_hr"]}``: transposed, the two biases summed."""
    dtype, gates = sizes.dtype, 4 * sizes.hidden
    h_name = "hidden_size" if sizes.proj_size is None else "proj_size"
    cell_input = "input_size" if layer == 0 else "num_directions * " + h_name
    layer_input = sizes.input_size if layer == 0 else weights.num_directions * sizes.recurrent
    w_ih = weights.shaped("weight", "ih", layer, direction, (gates, layer_input), f"4 * hidden_size, {cell_input}")
    w_hh = weights.shaped("weight", "hh", layer, direction, (gates, sizes.recurrent), f"4 * hidden_size, {h_name}")
    if weights.bias:
        b_ih = weights.shaped("bias", "ih", layer, direction, (gates,), "4 * hidden_size")
        b_hh = weights.shaped("bias", "hh", layer, direction, (gates,), "4 * hidden_size")
        b_ih, b_hh = b_ih.astype(dtype), b_hh.astype(dtype)
        # One rounding of the sum; a zero bias (e.g. written by to_torch) adds nothing,
        # so converting back and forth keeps every bit (-0.0 included).
        with np.errstate(over="ignore", invalid="ignore"):
            b = b_ih if not b_hh.any() else b_hh if not b_ih.any() else b_ih + b_hh
        # Two finite biases can still sum to ±Inf (e.g. 3e38 + 3e38 in float32).
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        where = f"{weights.source}: {weights.prefix + 'bias_ih' + suffix!r} + {weights.prefix + 'bias_hh' + suffix!r}"
        check_finite(b, where, weights.allow_nonfinite)
    else:
        b = np.zeros((gates,), dtype)
    cell = {"w_ih": jax_array(w_ih.astype(dtype).T), "w_hh": jax_array(w_hh.astype(dtype).T), "b": jax_array(b)}
    if sizes.proj_size is not None:
        shape = (sizes.proj_size, sizes.hidden)
        w_hr = weights.shaped("weight", "hr", layer, direction, shape, "proj_size, hidden_size")
        cell["w_hr"] = jax_array(w_hr.astype(dtype).T)
    return cell
