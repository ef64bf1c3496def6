"""Exact weight conversion between ``torch.nn.GRU`` and a jaxlstm GRU stack.

PyTorch stores, per layer ``k`` and direction (suffix ``_reverse`` for the
backward one), ``weight_ih_l{k}`` (3H, D), ``weight_hh_l{k}`` (3H, H) and two
biases ``bias_ih_l{k}``, ``bias_hh_l{k}`` (3H,), gates in the order r, z, n —
``jaxlstm.cells.GRU``'s order and equations. So a cell's ``GRUParams`` are
``(weight_ih.T, weight_hh.T, bias_ih, bias_hh)``: both biases are kept, since
``bias_hh``'s n block is multiplied by the reset gate. A stack is the
``tuple[layer][direction]`` of ``jaxlstm.init_rnn_stack``, which
``jaxlstm.stacked_rnn(jaxlstm.cells.GRU(), stack, xs)`` runs.

``torch`` is imported inside the functions only; files are read as
``load_torch`` reads them (checksums first, then ``weights_only=True``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .. import _checks
from ._common import consensus, read_gru_stack, require, warn_if_x64_disabled
from .torch import (
    _check_prefix,
    _find_prefix,
    _jax,
    _StateDictLSTM,
    _torch_dtype,
    _torch_tensor,
    _warn_unused,
    _weight_keys,
    read_state_dict_file,
)

__all__ = ["from_torch_gru", "load_torch_gru", "to_torch_gru"]

_FIELDS = (("weight", "ih"), ("weight", "hh"), ("bias", "ih"), ("bias", "hh"))


def from_torch_gru(gru, *, prefix: str | None = None, allow_nonfinite: bool = False, return_unused: bool = False):
    """The GRU stack computing what ``gru`` (a ``torch.nn.GRU`` or its state dict) computes.

    Args:
        gru: a ``torch.nn.GRU`` (any ``num_layers``, ``bidirectional``, ``bias``, ``batch_first``,
            on any device but ``meta``), or a state dict (a mapping of key → tensor or NumPy array,
            as ``gru.state_dict()``), which may be a whole model's with one ``nn.GRU`` inside.
        prefix: the GRU's key prefix in a state dict, e.g. ``"encoder.gru."``; ``None`` finds it
            (the one prefix before a ``weight_ih_l0`` key).
        allow_nonfinite: load NaN or ±Inf weights instead of refusing them.
        return_unused: return the keys of the state dict that are not the GRU's as a second value,
            instead of warning about them.

    Returns:
        ``stack``, nested ``tuple[layer][direction]`` → ``jaxlstm.GRUParams(w_ih (D|F, 3H),
        w_hh (H, 3H), b_ih (3H,), b_hh (3H,))``, so that for a batch-first ``x`` (B, T, D) and
        ``lengths`` (B,)::

            finals, hs = jaxlstm.stacked_rnn(jaxlstm.cells.GRU(), stack, x, seq_lengths=lengths)
            # hs == pad_packed_sequence(gru(pack_padded_sequence(x, lengths, batch_first=True,
            #           enforce_sorted=False))[0], batch_first=True, total_length=T)[0]
            # finals[k][d] == h_n[k * num_directions + d]

        With ``return_unused=True``, ``(stack, unused)``. ``bias=False`` gives zero biases; torch's
        ``dropout`` is ``stacked_rnn``'s ``dropout=`` (a state dict does not record it).

    Raises:
        TypeError: ``gru`` is neither a ``torch.nn.GRU`` nor a mapping.
        ValueError: a missing key, a misshaped one (named: the sizes are those most keys agree on),
            a key an ``nn.GRU`` does not have, a non-floating, sparse, ``meta`` or quantized tensor,
            or one holding NaN or ±Inf (see ``allow_nonfinite``).
    """
    allow_nonfinite = _checks.flag(allow_nonfinite, "allow_nonfinite")
    return_unused = _checks.flag(return_unused, "return_unused")
    _check_prefix(prefix)
    source = "state dict"
    if not isinstance(gru, Mapping):
        torch = require("torch", "torch", "from_torch_gru")
        if not isinstance(gru, torch.nn.GRU):
            cell = isinstance(gru, torch.nn.GRUCell)
            hint = " (nn.GRUCell: copy its weights into an nn.GRU of one layer)" if cell else ""
            raise TypeError(f"from_torch_gru converts a torch.nn.GRU or its state dict, got {type(gru).__name__}{hint}")
        gru, prefix, source = gru.state_dict(), "", "gru"
    stack, unused = _convert(gru, prefix, source, allow_nonfinite)
    if return_unused:
        return stack, unused
    _warn_unused(unused, source, stacklevel=3, kind="GRU")
    return stack


def load_torch_gru(path, *, prefix: str | None = None, allow_nonfinite: bool = False, return_unused: bool = False):
    """``from_torch_gru`` for a file written by ``torch.save(gru.state_dict(), path)``.

    Read as ``load_torch`` reads an LSTM's: every member of the file is checked against the CRC-32
    checksum ``torch.save`` stored for it (a damaged file is refused, the member named; a file with
    no checksums loads with a warning), then ``torch.load(path, weights_only=True,
    map_location="cpu")`` reads tensors and plain containers only, never arbitrary pickled objects.

    Args:
        path: a file path or a binary file object.
        prefix, allow_nonfinite, return_unused: as ``from_torch_gru``.

    Returns:
        The stack, or ``(stack, unused)`` with ``return_unused=True``, as ``from_torch_gru``.
    """
    allow_nonfinite = _checks.flag(allow_nonfinite, "allow_nonfinite")
    return_unused = _checks.flag(return_unused, "return_unused")
    _check_prefix(prefix)
    state_dict, source = read_state_dict_file(path, "gru", "load_torch_gru")
    stack, unused = _convert(state_dict, prefix, source, allow_nonfinite)
    if return_unused:
        return stack, unused
    _warn_unused(unused, source, stacklevel=3, kind="GRU")
    return stack


def _convert(state_dict: Mapping, prefix: str | None, source: str, allow_nonfinite: bool) -> tuple[tuple, list]:
    """``(stack, unused keys)`` of an ``nn.GRU``'s state dict."""
    from ..cells.gru import GRUParams

    keys = [k for k in state_dict if isinstance(k, str)]
    if prefix is None:
        prefix = _find_prefix(keys, source, kind="GRU")
    entries = _weight_keys(keys, prefix, source, kind="GRU")
    weights = _StateDictLSTM(state_dict, prefix, entries, source, allow_nonfinite)
    hidden, input_size, dtype = _read_sizes(weights)
    warn_if_x64_disabled(dtype, source)
    stack = []
    for layer in range(weights.num_layers):
        reads = input_size if layer == 0 else weights.num_directions * hidden
        what = "input_size" if layer == 0 else "num_directions * hidden_size"
        shapes = {
            ("weight", "ih"): ((3 * hidden, reads), f"3 * hidden_size, {what}"),
            ("weight", "hh"): ((3 * hidden, hidden), "3 * hidden_size, hidden_size"),
            ("bias", "ih"): ((3 * hidden,), "3 * hidden_size"),
            ("bias", "hh"): ((3 * hidden,), "3 * hidden_size"),
        }
        directions = []
        for direction in range(weights.num_directions):
            arrays = []
            for kind, which in _FIELDS:
                shape, axes = shapes[(kind, which)]
                if kind == "bias" and not weights.bias:
                    arrays.append(np.zeros(shape, dtype))
                    continue
                array = weights.shaped(kind, which, layer, direction, shape, axes)
                arrays.append(array.astype(dtype).T if kind == "weight" else array.astype(dtype))
            directions.append(GRUParams(*(_jax(array) for array in arrays)))
        stack.append(tuple(directions))
    used = set(entries.values())
    return tuple(stack), [key for key in state_dict if key not in used]


def _read_sizes(weights: _StateDictLSTM) -> tuple[int, int, np.dtype]:
    """``(hidden_size, input_size, dtype)`` as most tensors agree on them (so a misshaped tensor is the
    one named later), the dtype layer 0's ``weight_ih``'s."""
    source = weights.source
    shapes, names = {}, {}
    for entry in weights.entries:
        kind, which, layer, reverse = entry
        name, array = weights.tensor(kind, which, layer, int(reverse))
        ndim = 1 if kind == "bias" else 2
        if array.ndim != ndim:
            raise ValueError(f"{source}: {name!r} has shape {tuple(array.shape)}, expected a {ndim}-d tensor")
        shapes[entry], names[entry] = array.shape, name
    gates = consensus({entry: shape[0] for entry, shape in shapes.items()})
    if gates % 3:
        entry = next(e for e, shape in shapes.items() if shape[0] == gates)
        raise ValueError(
            f"{source}: {names[entry]!r} has shape {tuple(shapes[entry])}: its first axis packs the gates "
            "r, z, n, so its size must be 3 * hidden_size"
        )
    inputs = {e: shape[1] for e, shape in shapes.items() if e[:3] == ("weight", "ih", 0)}
    if len(set(inputs.values())) > 1:  # two directions, no majority: name both
        shown = ", ".join(f"{names[e]!r} has shape {tuple(shapes[e])}" for e in inputs)
        raise ValueError(f"{source}: the two directions of layer 0 read different input sizes: {shown}")
    _, w_ih0 = weights.tensor("weight", "ih", 0, 0)
    return gates // 3, consensus(inputs), w_ih0.dtype


def to_torch_gru(stack, *, prefix: str = "", bias: bool = True) -> dict:
    """A GRU stack as the state dict of a ``torch.nn.GRU``; ``from_torch_gru`` inverts it bit for bit.

    Args:
        stack: ``tuple[layer][direction]`` → ``jaxlstm.GRUParams`` (``jaxlstm.init_rnn_stack``,
            ``from_torch_gru``), one or two directions, later layers reading the first's outputs
            concatenated (torch's only merge).
        prefix: put before every key, e.g. ``"encoder.gru."`` for a whole model's state dict.
        bias: ``False`` for a ``bias=False`` module: no bias keys, allowed only when every bias is
            exactly zero.

    Returns:
        A ``dict`` of key → CPU tensor in the parameters' dtype: ``weight_ih_l{k}[_reverse]``
        ``(3H, D|F)``, ``weight_hh_l{k}`` ``(3H, H)``, ``bias_ih_l{k}`` and ``bias_hh_l{k}`` ``(3H,)``,
        for ``torch.nn.GRU(D, H, num_layers=L, bidirectional=...).load_state_dict(...)``.

    Raises:
        TypeError, ValueError: a stack of another nesting, a misshaped entry (named, e.g.
            ``stack[1][0].w_hh``), entries of different dtypes or a dtype torch lacks, nonzero biases
            with ``bias=False``.
    """
    torch = require("torch", "torch", "to_torch_gru")
    bias = _checks.flag(bias, "bias")
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str such as 'encoder.gru.', got {type(prefix).__name__} {prefix!r}")
    cells = read_gru_stack(stack, "to_torch_gru")
    torch_dtype = _torch_dtype(torch, cells[0][0][0].dtype)
    state = {}
    for layer, directions in enumerate(cells):
        for direction, (w_ih, w_hh, b_ih, b_hh) in enumerate(directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            state[prefix + "weight_ih" + suffix] = _torch_tensor(torch, w_ih.T, torch_dtype)
            state[prefix + "weight_hh" + suffix] = _torch_tensor(torch, w_hh.T, torch_dtype)
            if bias:
                state[prefix + "bias_ih" + suffix] = _torch_tensor(torch, b_ih, torch_dtype)
                state[prefix + "bias_hh" + suffix] = _torch_tensor(torch, b_hh, torch_dtype)
            elif b_ih.any() or b_hh.any():
                raise ValueError(
                    f"to_torch_gru(bias=False): stack[{layer}][{direction}]'s biases are not zero; "
                    "a bias-free torch module would change the outputs"
                )
    return state

