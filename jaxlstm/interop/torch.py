"""Exact weight conversion between ``torch.nn.LSTM`` and ``jaxlstm.LSTM``.

PyTorch stores, per layer ``k`` and direction (suffix ``_reverse`` for the
backward one), ``weight_ih_l{k}`` (4H, D), ``weight_hh_l{k}`` (4H, H) and two
biases ``bias_ih_l{k}``, ``bias_hh_l{k}`` (4H,), gates in the order i, f, g, o
— jaxlstm's order. So ``w_ih = weight_ih.T``, ``w_hh = weight_hh.T`` and,
since both biases are only ever added together, jaxlstm's single
``b = bias_ih + bias_hh``. The parameter names already match:
``params["layer_{k}"]`` and ``params["layer_{k}_reverse"]``.

An LSTM with projections (``proj_size=P > 0``) adds ``weight_hr_l{k}``
(P, H), jaxlstm's ``w_hr = weight_hr.T`` (H, P); its ``weight_hh_l{k}`` is
(4H, P), and layers after the first read P (2P bidirectional) features. It
becomes a ``jl.LSTM(H, variant=jl.LSTMVariant(proj_size=P))``.

``torch`` is imported inside the functions only: ``jaxlstm.interop`` imports
without it (``pip install jaxlstm[torch]`` adds it).
"""

from __future__ import annotations

import io
import os
import re
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from .. import _checks
from ._common import check_finite, consensus, floating, lstm_module, params_tree, read_stack, require, warn_if_x64_disabled

__all__ = ["from_torch", "from_torch_state_dict", "load_torch", "to_torch"]

_KEY = re.compile(r"^(weight|bias)_(ih|hh|hr)_l(\d+)(_reverse)?$")


def from_torch(lstm, *, allow_nonfinite: bool = False):
    """A ``jl.LSTM`` and its variables computing what ``lstm`` (a ``torch.nn.LSTM``) computes.

    Args:
        lstm: a ``torch.nn.LSTM``, any ``num_layers``, ``bidirectional``,
            ``bias``, ``dropout``, ``batch_first``, on any device but ``meta``.
        allow_nonfinite: load NaN or ±Inf weights instead of refusing them.

    Returns:
        ``(module, variables)``: ``module`` a ``jaxlstm.LSTM`` (linen) with
        ``features=hidden_size``, the same ``num_layers``, ``bidirectional``
        and ``dropout``, ``init_scheme="torch"``; ``variables`` a
        ``{"params": ...}`` dict; with ``proj_size > 0`` also ``variant=LSTMVariant(proj_size=...)``
        (each cell then has ``w_hr``). For a batch-first input ``x`` (B, T, D) and
        lengths ``lengths`` (B,)::

            module.apply(variables, x, seq_lengths=lengths)
            # == pad_packed_sequence(lstm(pack_padded_sequence(x, lengths,
            #        batch_first=True, enforce_sorted=False)), batch_first=True,
            #        total_length=T)[0]
            module.clone(return_sequences=False).apply(variables, x, seq_lengths=lengths)
            # == h_n[-1], or torch.cat([h_n[-2], h_n[-1]], -1) if bidirectional

        and ``module.clone(return_carry=True)`` gives every layer's final
        ``(h, c)``: ``carries[k][d]`` is torch's ``h_n[k * num_directions + d]``.

    The jaxlstm module is always batch-first. A ``batch_first=False`` torch
    module converts all the same, but its time-major data ``(T, B, D)`` must
    be transposed for the jaxlstm module: pass ``x.swapaxes(0, 1)`` and swap
    the outputs back if you need them time-major.

    The two torch biases become one (``b = bias_ih + bias_hh``, rounded once
    in the parameter dtype); ``bias=False`` becomes ``b = 0``. ``dropout`` is
    carried over (jaxlstm applies it, like torch, to every layer's output but
    the last, with ``deterministic=False``).

    Raises:
        TypeError: ``lstm`` is not a ``torch.nn.LSTM``.
        ValueError: a weight holds NaN or ±Inf (its key and the count named;
            see ``allow_nonfinite``), or is not a dense strided tensor with
            values (on the ``meta`` device, sparse, nested or quantized).
    """
    torch = require("torch", "torch", "from_torch")

    if not isinstance(lstm, torch.nn.LSTM):
        raise TypeError(
            f"from_torch converts a torch.nn.LSTM, got {type(lstm).__name__}"
            + (
                " (nn.LSTMCell: wrap its weights in an nn.LSTM of one layer)"
                if isinstance(lstm, torch.nn.LSTMCell)
                else ""
            )
        )
    allow_nonfinite = _checks.flag(allow_nonfinite, "allow_nonfinite")
    module, variables, _ = _convert(lstm.state_dict(), "", float(lstm.dropout), "lstm", allow_nonfinite)
    return module, variables


def from_torch_state_dict(
    state_dict,
    *,
    prefix: str | None = None,
    dropout: float = 0.0,
    source: str = "state dict",
    allow_nonfinite: bool = False,
    return_unused: bool = False,
):
    """``from_torch`` for an ``nn.LSTM``'s state dict, without the module.

    Args:
        state_dict: a mapping of key → tensor, as ``lstm.state_dict()`` (torch
            tensors or NumPy arrays; torch is only needed for the former). It
            may be a whole model's state dict holding one ``nn.LSTM``.
        prefix: the LSTM's key prefix in ``state_dict``, e.g. ``"encoder.lstm."``.
            ``None`` finds it: the one prefix before a ``weight_ih_l0`` key.
        dropout: the module's ``dropout`` (a state dict does not record it).
        source: how error messages name the state dict (e.g. its file).
        allow_nonfinite: load NaN or ±Inf weights instead of refusing them.
        return_unused: return the keys that are not the LSTM's as a third
            value, instead of warning about them.

    ``num_layers``, ``bidirectional``, ``hidden_size``, ``input_size``,
    ``bias`` and ``proj_size`` (from ``weight_hr_l0``) are read from the keys
    and shapes; every expected key must be present with the expected shape,
    or a ValueError names it. So does one holding NaN or ±Inf (unless
    ``allow_nonfinite``) or one that is not a dense strided tensor with
    values (``meta``, sparse, nested or quantized tensors are refused).

    Returns:
        ``(module, variables)`` as ``from_torch``; with ``return_unused=True``,
        ``(module, variables, unused)``, where ``unused`` lists the keys of
        ``state_dict`` that are not the LSTM's (a classifier head, an
        embedding, ...), in the state dict's order.

    Warns:
        UserWarning: ``state_dict`` holds keys that are not the LSTM's (and
            ``return_unused`` is False): it names them, as the rest of a
            whole model that is still to be converted. PyTorch's
            ``load_state_dict(strict=False)`` returns them likewise.
    """
    allow_nonfinite = _checks.flag(allow_nonfinite, "allow_nonfinite")
    return_unused = _checks.flag(return_unused, "return_unused")
    _check_prefix(prefix)
    module, variables, unused = _convert(state_dict, prefix, dropout, source, allow_nonfinite)
    if return_unused:
        return module, variables, unused
    _warn_unused(unused, source, stacklevel=3)
    return module, variables


def _convert(state_dict, prefix: str | None, dropout: float, source: str, allow_nonfinite: bool):
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
        prefix = _find_prefix(keys, source)
    entries = _weight_keys(keys, prefix, source)
    weights = _StateDictLSTM(state_dict, prefix, entries, source, allow_nonfinite)
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


def _check_prefix(prefix) -> None:
    if prefix is not None and not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str such as 'encoder.lstm.' or None, got {type(prefix).__name__} {prefix!r}")


def _warn_unused(unused: list, source: str, stacklevel: int, kind: str = "LSTM") -> None:
    """Names the keys a whole model's state dict holds besides the LSTM's (``kind``'s): what is still to convert."""
    if not unused:
        return
    shown = ", ".join(map(repr, unused[:12])) + (f", ... ({len(unused) - 12} more)" if len(unused) > 12 else "")
    warnings.warn(
        f"{source}: converted the {kind} only; {len(unused)} key{'s' if len(unused) > 1 else ''} of the state dict "
        f"{'are' if len(unused) > 1 else 'is'} not the {kind}'s and {'were' if len(unused) > 1 else 'was'} left "
        f"unused: {shown}. Convert the rest of the model separately, or pass return_unused=True to get these keys "
        "as a list instead of this warning",
        UserWarning,
        stacklevel=stacklevel,
    )


def _find_prefix(keys: list[str], source: str, kind: str = "LSTM") -> str:
    """The one key prefix before a ``weight_ih_l0`` key, e.g. ``"encoder.lstm."``."""
    prefixes = sorted({k[: -len("weight_ih_l0")] for k in keys if k.endswith("weight_ih_l0")})
    if not prefixes:
        shown = ", ".join(map(repr, keys[:8])) + (", ..." if len(keys) > 8 else "")
        raise ValueError(
            f"{source}: no 'weight_ih_l0' key, so not the state dict of a torch.nn.{kind} (keys: {shown or 'none'})"
        )
    if len(prefixes) > 1:
        raise ValueError(f"{source}: holds {len(prefixes)} {kind}s (key prefixes {prefixes}); pick one with prefix=...")
    return prefixes[0]


def _weight_keys(
    keys: list[str], prefix: str, source: str, kind: str = "LSTM"
) -> dict[tuple[str, str, int, bool], str]:
    """``(kind, which, layer, reverse)`` → key, e.g. ``("weight", "ih", 0, False)`` → ``"lstm.weight_ih_l0"``.

    Keys of other submodules under ``prefix`` (with a ``.``) are skipped; any
    other direct entry is an error.
    """
    entries = {}
    for key in keys:
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        match = _KEY.match(rest)
        if match is None:
            if "." not in rest:  # a direct entry of the LSTM module that is not an LSTM weight
                raise ValueError(f"{source}: unexpected key {key!r} for a torch.nn.{kind} state dict")
            continue  # belongs to another submodule
        weight, which, layer, reverse = match.groups()
        if which == "hr" and kind != "LSTM":
            raise ValueError(f"{source}: unexpected key {key!r}: torch.nn.{kind} has no projection")
        if which == "hr" and weight == "bias":
            raise ValueError(f"{source}: unexpected key {key!r}: torch.nn.LSTM's projection has no bias")
        entries[(weight, which, int(layer), reverse is not None)] = key
    if not entries:
        raise ValueError(f"{source}: no nn.{kind} weights under prefix {prefix!r}")
    return entries


class _StateDictLSTM:
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
            array = _to_numpy(value, where)
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


def _read_sizes(weights: _StateDictLSTM) -> _Sizes:
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


def _read_cell(weights: _StateDictLSTM, sizes: _Sizes, layer: int, direction: int) -> dict:
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
    cell = {"w_ih": _jax(w_ih.astype(dtype).T), "w_hh": _jax(w_hh.astype(dtype).T), "b": _jax(b)}
    if sizes.proj_size is not None:
        shape = (sizes.proj_size, sizes.hidden)
        w_hr = weights.shaped("weight", "hr", layer, direction, shape, "proj_size, hidden_size")
        cell["w_hr"] = _jax(w_hr.astype(dtype).T)
    return cell


def load_torch(
    path,
    *,
    prefix: str | None = None,
    dropout: float = 0.0,
    allow_nonfinite: bool = False,
    return_unused: bool = False,
):
    """``from_torch`` for a state dict saved with ``torch.save(lstm.state_dict(), path)``.

    The file is verified first: ``torch.save`` writes a zip archive that
    stores a CRC-32 checksum of every member, and each member is checked
    against it, so a file changed after it was written (a bad copy, a
    truncated download, a disk error) is refused before torch reads it. A
    file that carries no checksums (torch's legacy pre-1.6 format, or one
    saved with ``compute_crc32=False``) loads with a warning saying it could
    not be verified.

    It is then read with ``torch.load(path, weights_only=True,
    map_location="cpu")``: tensors and plain containers only, never arbitrary
    pickled objects (a whole pickled ``nn.Module`` is refused — save its
    ``state_dict()``). ``num_layers``, ``bidirectional``, ``hidden_size``,
    ``input_size`` and ``bias`` are inferred from the keys and shapes.

    Args:
        path: a file path (or a binary file object).
        prefix: the LSTM's key prefix if the file is a whole model's state
            dict with the LSTM inside (``None``: found automatically).
        dropout: the module's ``dropout`` (not recorded in a state dict).
        allow_nonfinite: load NaN or ±Inf weights instead of refusing them.
        return_unused: return the keys that are not the LSTM's as a third
            value, instead of warning about them.

    Returns:
        ``(module, variables)`` as ``from_torch``; with ``return_unused=True``,
        ``(module, variables, unused)`` as ``from_torch_state_dict``.

    Warns:
        UserWarning: the file is a whole model's state dict and
            ``return_unused`` is False: the warning names the keys that are
            not the LSTM's (the rest of the model, still to be converted).

    Raises:
        TypeError: ``path`` is neither a path nor a binary file object.
        FileNotFoundError: no such file.
        ValueError: naming the file, if it is damaged (the member that fails
            its checksum is named), is not a readable torch file, does not
            hold a state dict, or misses a key or has a misshaped, sparse or
            non-finite tensor (the key is named).
    """
    allow_nonfinite = _checks.flag(allow_nonfinite, "allow_nonfinite")
    return_unused = _checks.flag(return_unused, "return_unused")
    _check_prefix(prefix)
    obj, source = read_state_dict_file(path, "lstm", "load_torch")
    module, variables, unused = _convert(obj, prefix, dropout, source, allow_nonfinite)
    if return_unused:
        return module, variables, unused
    _warn_unused(unused, source, stacklevel=3)
    return module, variables


def read_state_dict_file(path, module: str, caller: str) -> tuple[Mapping, str]:
    """The state dict in the file ``path`` and how errors name the file: ``load_torch``'s reading.

    Verifies the CRC-32 checksums, then reads with ``torch.load(weights_only=True)``: tensors and plain
    containers only, never arbitrary pickled objects. ``module`` names the torch module in messages
    (``"lstm"``, ``"gru"``), ``caller`` the function.
    """
    torch = require("torch", "torch", caller)

    if not isinstance(path, (str, os.PathLike)) and not callable(getattr(path, "read", None)):
        raise TypeError(
            "path must be a file path (a str or os.PathLike) or a binary file object with read(), "
            f"got {type(path).__name__} {path!r:.80}"
        )
    source = repr(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else repr(path)
    if isinstance(path, (str, os.PathLike)):
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file: {source}")
        if not os.path.isfile(path):
            raise ValueError(
                f"{source} is not a file (expected a file written by torch.save({module}.state_dict(), path))"
            )
    elif not callable(getattr(path, "seekable", None)) or not path.seekable():
        path = io.BytesIO(path.read())  # the checksums are read before torch reads the file
    verified = _verify_archive(path, source)
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{source} could not be read as a torch state dict ({type(error).__name__}: {reason[:200]}); "
            f"expected a file written by torch.save({module}.state_dict(), path) "
            "(loaded with weights_only=True: pickled modules and other objects are refused)"
        ) from error
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{source} holds a {type(obj).__name__}, not a state dict; "
            f"save one with torch.save({module}.state_dict(), path)"
        )
    if not verified:
        warnings.warn(
            f"{source} carries no CRC-32 checksums (torch's legacy format, or saved with compute_crc32=False), "
            "so it was loaded without an integrity check",
            stacklevel=3,
        )
    return obj, source


def _verify_archive(file, source: str) -> bool:
    """Checks every member of a ``torch.save`` zip archive against its stored CRC-32.

    Returns ``False`` for a file with nothing to check against (not a zip:
    torch's legacy format, or not a torch file, which ``torch.load`` then
    reports; or a zip written without checksums), ``True`` once every member
    matches. Raises a ValueError naming the member that does not. A file
    object is left at the position it had.
    """
    if isinstance(file, (str, os.PathLike)):
        return _check_members(file, source)
    start = file.tell()
    try:
        return _check_members(file, source)
    finally:
        file.seek(start)


def _check_members(file, source: str) -> bool:
    """``_verify_archive`` for a path or a file object at any position."""
    if not zipfile.is_zipfile(file):
        return False
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise ValueError(f"{source} is damaged: its zip directory cannot be read ({error})") from error
    with archive:
        members = archive.infolist()
        if not any(member.CRC for member in members if member.file_size):
            return False  # torch.save with compute_crc32=False writes 0 for every checksum
        for member in members:
            try:
                with archive.open(member) as stream:
                    while stream.read(1 << 20):
                        pass
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as error:
                reason = (
                    "does not match the CRC-32 checksum torch.save stored for it"
                    if "CRC" in str(error)
                    else f"cannot be read ({error})"
                )
                raise ValueError(
                    f"{source} is damaged: its member {member.filename!r} {reason}, so the file changed after "
                    "it was written (a bad copy, a truncated download, a disk error); nothing was loaded — "
                    "save or copy it again"
                ) from None
    return True


def to_torch(module, variables, *, bias: bool = True, prefix: str | None = None, state_dict=None):
    """A ``torch.nn.LSTM`` (``batch_first=True``) computing what ``module.apply(variables, ...)`` computes,
    or, with ``prefix`` or ``state_dict``, its weights for a whole model's state dict.

    Args:
        module: a ``jaxlstm.LSTM`` (linen); bidirectional modules must use
            ``merge="concat"`` (torch's only merge) and ``reverse=True`` has
            no torch counterpart. Of the LSTM variants, torch has
            ``proj_size`` only (it becomes torch's ``proj_size``).
        variables: its variables, ``{"params": ...}``.
        bias: ``False`` makes a ``bias=False`` torch module, allowed only when
            every ``b`` is exactly zero.
        prefix: the LSTM's key prefix in a whole model's state dict, e.g.
            ``"encoder.lstm."``: return the LSTM's state dict with its keys
            under it (``"encoder.lstm.weight_ih_l0"``, ...) instead of the module.
        state_dict: a whole model's state dict (``model.state_dict()``) to
            write the weights back into: returns a copy of it with the LSTM's
            entries under ``prefix`` replaced (``prefix=None`` finds the one
            LSTM in it, as ``from_torch_state_dict`` does). Each entry must
            already be there, with the same shape and dtype, and the model's
            LSTM must have no entries this one lacks (more layers, a second
            direction, biases), or a ValueError names the key; the tensors
            keep the device of the ones they replace. ``state_dict`` is not
            changed.

    Returns:
        Without ``prefix`` and ``state_dict``, a new ``torch.nn.LSTM`` on the CPU with ``input_size`` from the
        variables, ``hidden_size=features``, the same ``num_layers``,
        ``bidirectional``, ``dropout`` and ``proj_size``, in the parameter dtype, in torch's
        default (training) mode — call ``.eval()`` for inference when
        ``dropout > 0``. With ``prefix`` alone, that module's state dict, a
        ``dict`` of key → tensor with the keys under ``prefix``; with
        ``state_dict``, the model's whole state dict, for
        ``model.load_state_dict(...)`` (``strict=True`` passes).

    jaxlstm keeps one bias per cell; torch has two that it adds. The bias is
    written as ``bias_ih = b`` and ``bias_hh = 0``, so torch's sum equals
    ``b`` exactly and the outputs are identical; ``from_torch`` of the
    result gives back every array bit for bit. (A round trip starting from
    torch keeps ``bias_ih + bias_hh`` but not the split.)
    """
    torch = require("torch", "torch", "to_torch")

    bias = _checks.flag(bias, "bias")
    _check_prefix(prefix)
    if state_dict is not None and not isinstance(state_dict, Mapping):
        raise TypeError(
            "state_dict must be a whole model's state dict (a mapping of key -> tensor, as model.state_dict()) "
            f"or None, got {type(state_dict).__name__}"
        )
    module = lstm_module(module)
    if module.bidirectional and module.merge != "concat":
        raise ValueError(
            f"to_torch: torch.nn.LSTM concatenates its two directions; a module with merge={module.merge!r} "
            "has no torch equivalent (use merge='concat')"
        )
    if module.reverse:
        raise ValueError(
            "to_torch: torch.nn.LSTM has no single backward direction; "
            "a module with reverse=True has no torch equivalent"
        )
    variant = module.config.cell_variant
    unsupported = {k: v for k, v in variant.options.items() if k not in ("proj_size", "layer_norm_epsilon")}
    if unsupported:
        options = ", ".join(f"{k}={v!r}" for k, v in unsupported.items())
        raise ValueError(
            f"to_torch: torch.nn.LSTM has no {options}; of jaxlstm's LSTM variants it has proj_size only "
            "(see docs/variants.md, or run jaxlstm docs variants)"
        )
    stack = read_stack(module, variables) if variant.proj_size is None else _read_projected_stack(module, variables)
    input_size = stack[0][0][0].shape[0]
    dtype = stack[0][0][0].dtype
    if not bias:
        nonzero = [
            f"{_cell(layer, d)}.b" for layer, dirs in enumerate(stack) for d, cell in enumerate(dirs) if cell[2].any()
        ]
        if nonzero:
            raise ValueError(
                f"to_torch(bias=False): the biases {nonzero} are not zero; "
                "a bias-free torch module would change the outputs"
            )
    torch_dtype = _torch_dtype(torch, dtype)
    with warnings.catch_warnings():
        # torch warns that dropout with num_layers=1 does nothing; jaxlstm allows it likewise.
        warnings.filterwarnings("ignore", message=".*dropout option adds dropout after all but last recurrent layer.*")
        lstm = torch.nn.LSTM(
            input_size,
            module.features,
            num_layers=module.num_layers,
            bias=bias,
            batch_first=True,
            dropout=float(module.dropout),
            bidirectional=module.bidirectional,
            proj_size=variant.proj_size or 0,
            dtype=torch_dtype,
        )
    state = {}
    for layer, directions in enumerate(stack):
        for direction, (w_ih, w_hh, b, *w_hr) in enumerate(directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            state["weight_ih" + suffix] = _torch_tensor(torch, w_ih.T, torch_dtype)
            state["weight_hh" + suffix] = _torch_tensor(torch, w_hh.T, torch_dtype)
            if bias:
                state["bias_ih" + suffix] = _torch_tensor(torch, b, torch_dtype)
                state["bias_hh" + suffix] = torch.zeros(b.shape, dtype=torch_dtype)
            if w_hr:
                state["weight_hr" + suffix] = _torch_tensor(torch, w_hr[0].T, torch_dtype)
    lstm.load_state_dict(state, strict=True)
    if state_dict is not None:
        return _write_into(torch, state_dict, lstm.state_dict(), prefix)
    if prefix is not None:
        return {prefix + key: value for key, value in lstm.state_dict().items()}
    return lstm


def _write_into(torch, state_dict: Mapping, lstm_state: Mapping, prefix: str | None) -> Mapping:
    """A copy of a whole model's ``state_dict`` with its LSTM's entries under ``prefix`` replaced by
    ``lstm_state``'s, each checked to have the same shape and dtype as the entry it replaces."""
    import copy

    keys = [k for k in state_dict if isinstance(k, str)]
    source = "to_torch: state_dict"
    if prefix is None:
        prefix = _find_prefix(keys, source)
    theirs = set(_weight_keys(keys, prefix, source).values())
    ours = {prefix + key: value for key, value in lstm_state.items()}
    lacking = [key for key in keys if key in theirs and key not in ours]
    if lacking:
        raise ValueError(
            f"{source} has LSTM entries {lacking} under prefix {prefix!r} that this module does not have "
            f"(it has {sorted(ours)}): the model's LSTM has another configuration (layers, directions, bias)"
        )
    # copy.copy keeps an OrderedDict's _metadata, which load_state_dict reads
    result: dict = copy.copy(state_dict) if isinstance(state_dict, dict) else dict(state_dict)
    for key, value in ours.items():
        if key not in state_dict:
            raise ValueError(
                f"{source} has no entry {key!r}, which this module writes: the model's LSTM under prefix "
                f"{prefix!r} has another configuration (it has {sorted(theirs)})"
            )
        old = state_dict[key]
        if not isinstance(old, torch.Tensor):
            raise ValueError(f"{source}: {key!r} is a {type(old).__name__}, not a tensor")
        if tuple(old.shape) != tuple(value.shape) or old.dtype != value.dtype:
            raise ValueError(
                f"{source}: {key!r} has shape {tuple(old.shape)} and dtype {old.dtype}; this module writes "
                f"shape {tuple(value.shape)} and dtype {value.dtype} (a model of other sizes, or another "
                "parameter dtype: cast one of them first, as a silent cast would change the weights)"
            )
        result[key] = value.to(old.device)
    return result


def _read_projected_stack(module, variables) -> list[list[tuple[np.ndarray, ...]]]:
    """``[layer][direction]`` → NumPy ``(w_ih, w_hh, b, w_hr)`` of a projecting ``jl.LSTM``'s variables.

    As ``read_stack``, with the projection's shapes: ``w_hh`` (P, 4H), ``w_hr``
    (H, P), and layers after the first reading P (2P bidirectional) features.
    """
    from ..linen import cell_name

    params = params_tree(variables)
    hidden, proj = module.features, module.variant.proj_size
    fields = ("w_ih", "w_hh", "b", "w_hr")
    names = [cell_name(layer, d) for layer in range(module.num_layers) for d in range(module.num_directions)]
    extra = sorted(set(params) - set(names))
    if extra:
        raise ValueError(
            f"params has entries {extra} that a jaxlstm.LSTM with num_layers={module.num_layers}, "
            f"bidirectional={module.bidirectional} does not have (it has {names})"
        )
    stack, input_size = [], None
    for layer in range(module.num_layers):
        directions = []
        for direction in range(module.num_directions):
            name = cell_name(layer, direction)
            cell = params.get(name)
            if not isinstance(cell, Mapping):
                raise ValueError(f"params[{name!r}] is missing; expected {names}, got {sorted(params)}")
            unexpected = sorted(set(cell) - set(fields))
            if unexpected:
                raise ValueError(f"params[{name!r}] has unexpected entries {unexpected}; expected {', '.join(fields)}")
            arrays = {}
            for field in fields:
                if field not in cell:
                    raise ValueError(f"params[{name!r}][{field!r}] is missing; got {sorted(cell)}")
                arrays[field] = np.asarray(cell[field])
            if input_size is None:
                input_size = arrays["w_ih"].shape[0] if arrays["w_ih"].ndim == 2 else -1
            layer_input = input_size if layer == 0 else module.output_size
            shapes = {"w_ih": (layer_input, 4 * hidden), "w_hh": (proj, 4 * hidden), "b": (4 * hidden,)}
            shapes["w_hr"] = (hidden, proj)
            for field, shape in shapes.items():
                if arrays[field].shape != shape:
                    raise ValueError(
                        f"params[{name!r}][{field!r}] has shape {arrays[field].shape}, expected {shape} "
                        f"for features={hidden}, proj_size={proj}"
                    )
            directions.append(tuple(arrays[field] for field in fields))
        stack.append(directions)
    return stack


def _cell(layer: int, direction: int) -> str:
    return f"layer_{layer}" + ("_reverse" if direction else "")


def _to_numpy(value, where: str) -> np.ndarray:
    """A torch tensor (any device, any float dtype) or array-like as a NumPy array, bits unchanged.

    Raises a TypeError for something that is no array, and a ValueError
    (naming ``where``) for a tensor that has no dense values to copy.
    """
    if type(value).__module__.startswith("torch"):
        import torch

        if not isinstance(value, torch.Tensor):
            raise TypeError(type(value).__name__)
        _check_dense(torch, value, where)
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            import ml_dtypes

            return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return value.numpy()
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise TypeError(type(value).__name__)
    return np.asarray(value)


def _check_dense(torch, tensor, where: str) -> None:
    """Refuses tensors whose values cannot be copied as they are: meta, nested, sparse (any non-strided layout)
    and quantized ones."""
    expected = "expected a dense strided tensor on the CPU or a GPU"
    if tensor.is_meta:
        raise ValueError(
            f"{where} is on the meta device: it has a shape but no values; {expected}. Materialise the weights "
            "first (e.g. lstm.to_empty(device='cpu'), then load the real values into it)"
        )
    if tensor.is_nested:
        raise ValueError(f"{where} is a nested tensor; {expected}")
    if tensor.layout != torch.strided:
        raise ValueError(f"{where} has layout {tensor.layout}; {expected}: convert it with .to_dense()")
    if tensor.is_quantized:
        raise ValueError(
            f"{where} is a quantized tensor ({tensor.dtype}); expected a floating-point one: convert it with "
            ".dequantize()"
        )


def _jax(array: np.ndarray):
    import jax.numpy as jnp

    return jnp.asarray(np.ascontiguousarray(array))


def _torch_dtype(torch, dtype: np.dtype):
    name = np.dtype(dtype).name
    table = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise ValueError(f"to_torch: parameters of dtype {name} have no torch.nn.LSTM equivalent")
    return table[name]


def _torch_tensor(torch, array: np.ndarray, torch_dtype):
    array = np.ascontiguousarray(array)
    if torch_dtype == torch.bfloat16:
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(array.copy())
