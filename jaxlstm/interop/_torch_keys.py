"""A torch state dict's keys: which are an ``nn.LSTM``'s (or ``nn.GRU``'s), and the rest of a whole model's.

An ``nn.LSTM`` names its tensors ``{prefix}{weight|bias}_{ih|hh|hr}_l{k}[_reverse]``, the prefix
being the module's path in a whole model (``"encoder.lstm."``, ``""`` for the module's own state
dict). ``find_prefix`` and ``weight_keys`` pick the LSTM's keys out of a state dict;
``warn_unused`` names the others (the rest of the model, still to convert), and ``write_into``
puts converted weights back under the LSTM's keys of a whole model's state dict.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping

__all__ = ["check_prefix", "find_prefix", "warn_unused", "weight_keys", "write_into"]

_KEY = re.compile(r"^(weight|bias)_(ih|hh|hr)_l(\d+)(_reverse)?$")


def check_prefix(prefix) -> None:
    if prefix is not None and not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str such as 'encoder.lstm.' or None, got {type(prefix).__name__} {prefix!r}")


def warn_unused(unused: list, source: str, stacklevel: int, kind: str = "LSTM") -> None:
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


def find_prefix(keys: list[str], source: str, kind: str = "LSTM") -> str:
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


def weight_keys(
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


def write_into(torch, state_dict: Mapping, lstm_state: Mapping, prefix: str | None) -> Mapping:
    """A copy of a whole model's ``state_dict`` with its LSTM's entries under ``prefix`` replaced by
    ``lstm_state``'s, each checked to have the same shape and dtype as the entry it replaces."""
    import copy

    keys = [k for k in state_dict if isinstance(k, str)]
    source = "to_torch: state_dict"
    if prefix is None:
        prefix = find_prefix(keys, source)
    theirs = set(weight_keys(keys, prefix, source).values())
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
