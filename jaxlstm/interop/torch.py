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

This module holds the four public functions; their parts live in
``_torch_keys`` (a state dict's keys: the LSTM's, and the rest of a whole
model's), ``_torch_read`` (a state dict read as a module and its variables),
``_torch_file`` (a saved file, read safely) and ``_torch_tensors`` (tensors to
NumPy and back, bits unchanged).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

from .. import _checks
from ..layer import cell_name
from ._common import lstm_module, read_stack, refuse_variant_options, require

# torch_gru reads state dicts and files as these modules do: it imports them from here.
from ._torch_file import read_state_dict_file as read_state_dict_file
from ._torch_keys import check_prefix as _check_prefix
from ._torch_keys import find_prefix as _find_prefix
from ._torch_keys import warn_unused as _warn_unused
from ._torch_keys import weight_keys as _weight_keys
from ._torch_keys import write_into as _write_into
from ._torch_read import StateDictLSTM as _StateDictLSTM
from ._torch_read import convert as _convert
from ._torch_tensors import jax_array as _jax
from ._torch_tensors import torch_dtype as _torch_dtype
from ._torch_tensors import torch_tensor as _torch_tensor

__all__ = ["from_torch", "from_torch_state_dict", "load_torch", "to_torch"]


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
    module = _check_torch_has(lstm_module(module))
    stack = read_stack(module, variables)
    if not bias:
        nonzero = [
            f"{cell_name(layer, direction)}.b"
            for layer, directions in enumerate(stack)
            for direction, cell in enumerate(directions)
            if cell[2].any()
        ]
        if nonzero:
            raise ValueError(
                f"to_torch(bias=False): the biases {nonzero} are not zero; "
                "a bias-free torch module would change the outputs"
            )
    lstm = _torch_lstm(torch, module, stack, bias)
    if state_dict is not None:
        return _write_into(torch, state_dict, lstm.state_dict(), prefix)
    if prefix is not None:
        return {prefix + key: value for key, value in lstm.state_dict().items()}
    return lstm


def _check_torch_has(module):
    """Refuses a ``jl.LSTM`` that no ``torch.nn.LSTM`` computes; returns it."""
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
    refuse_variant_options(module, ("proj_size",), "to_torch: torch.nn.LSTM", "proj_size only")
    return module


def _torch_lstm(torch, module, stack: list, bias: bool):
    """A new ``torch.nn.LSTM`` (``batch_first``, CPU, the parameters' dtype) holding ``read_stack``'s ``stack``:
    ``weight_ih = w_ih.T``, ``weight_hh = w_hh.T``, ``weight_hr = w_hr.T``, ``bias_ih = b``, ``bias_hh = 0``."""
    w_ih0 = stack[0][0][0]  # (D, 4H)
    torch_dtype = _torch_dtype(torch, w_ih0.dtype)
    with warnings.catch_warnings():
        # torch warns that dropout with num_layers=1 does nothing; jaxlstm allows it likewise.
        warnings.filterwarnings("ignore", message=".*dropout option adds dropout after all but last recurrent layer.*")
        lstm = torch.nn.LSTM(
            w_ih0.shape[0],
            module.features,
            num_layers=module.num_layers,
            bias=bias,
            batch_first=True,
            dropout=float(module.dropout),
            bidirectional=module.bidirectional,
            proj_size=module.config.cell_variant.proj_size or 0,
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
    return lstm
