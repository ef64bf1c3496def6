"""Reading a file written by ``torch.save(module.state_dict(), path)``, safely.

Every member of the zip archive ``torch.save`` writes is checked against the CRC-32 checksum
stored for it before torch reads the file; then ``torch.load(..., weights_only=True)`` reads
tensors and plain containers only, never arbitrary pickled objects. ``load_torch`` and
``load_torch_gru`` read their files here.
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
import zlib
from collections.abc import Mapping

from ._common import require

__all__ = ["read_state_dict_file"]


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
