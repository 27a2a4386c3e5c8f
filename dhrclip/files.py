"""Files: atomic writes, JSON, code-free torch loading and cheap file fingerprints.

Nothing here imports torch at module level, so the dataset indexers can use
it without loading the model stack.
"""
from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import UserError

_FINGERPRINT_CHUNK = 1 << 20
_ARCHIVE_SLACK = 1 << 20  # zip headers and small compressed records


TEMPORARY_SUFFIX = ".dhrclip-tmp"  # what ``atomic_write``'s temporary files end with, and nothing else


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write through ``write(file_object)`` into a temporary file beside ``path``, then rename
    over ``path``, so a crash or kill leaves either the old file or the new one, never half of
    one. A failed write (a full disk, a read-only folder) removes the temporary file and ends
    in one ``UserError`` naming ``path``."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give what any new file gets
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        cause = os_error(exc)
        if cause is None:
            raise
        raise UserError(f"cannot write {path}: {cause.strerror or cause}") from exc


def os_error(exc: BaseException) -> OSError | None:
    """The operating system's refusal behind ``exc``, if any: ``exc`` itself or an error it was
    raised from (torch.save reports a failed write as a RuntimeError raised from the OSError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def remove_temporaries(folder: Path, name: str = "*", recursive: bool = False) -> int:
    """Remove the temporary files that interrupted writes of ``atomic_write`` (a killed run) left
    in ``folder`` (and below it, if ``recursive``) for files named ``name`` (any by default).
    Returns how many. Call it at the start of a run, before anything of that run is written."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    pattern = f".{glob.escape(name) if name != '*' else '*'}.*{TEMPORARY_SUFFIX}"
    found = list(folder.rglob(pattern) if recursive else folder.glob(pattern))
    for stale in found:
        stale.unlink(missing_ok=True)
    return len(found)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_npy(path: Path, array: np.ndarray) -> None:
    """``array`` as a .npy file, written atomically and in one write (numpy's own file writes
    report a full disk without the system's reason)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def save_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2).encode()))


def read_json(path: Path, what: str, field: str | None = None, max_bytes: int = 64 * 2**20) -> Any:
    """Parse a JSON file, with a one-line error naming ``what`` it should have been: a missing
    file, one too large to be what it claims, text that is not JSON, nesting too deep to parse,
    and the non-standard NaN and Infinity literals are all refused (``field``: the setting that
    named the file)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise UserError(f"{what} {path} is {size / 2**20:.0f} MB, too large for a {what}", field=field)
        return json.loads(path.read_bytes(), parse_constant=_refuse_constant)
    except FileNotFoundError as exc:
        raise UserError(f"{what} {path} not found", field=field) from exc
    except IsADirectoryError as exc:
        raise UserError(f"{what} {path} is a folder, not a file", field=field) from exc
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{what} {path} is not valid JSON ({exc})", field=field) from exc
    except RecursionError as exc:
        raise UserError(f"{what} {path} is nested too deeply to be a {what}", field=field) from exc


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def safe_torch_load(path: Path, what: str) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, so a
    crafted file is refused and cannot run code when it is opened. A zip archive whose entries
    declare more bytes than the file holds (a compressed bomb) is refused before it inflates."""
    import torch

    _check_archive(Path(path), what)
    with open(path, "rb") as handle:
        head = handle.read(2)
    if head[:1] != b"\x80" and head != b"PK":  # neither a pickle nor a zip archive: not torch.save's
        raise UserError(f"cannot read {what} {path}: not a PyTorch file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"refused to load {path}: it holds objects other than tensors and plain data, "
                        f"and loading it could run code") from exc
    except Exception as exc:
        raise UserError(f"cannot read {what} {path}: corrupt or not a PyTorch file ({type(exc).__name__})") from exc


def _check_archive(path: Path, what: str) -> None:
    """PyTorch stores tensors uncompressed, so what a zip archive of them declares fits in the file."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise UserError(f"cannot read {what} {path}: corrupt ({exc})") from exc
    size = path.stat().st_size
    if declared > size + _ARCHIVE_SLACK:
        raise UserError(f"refused to load {what} {path}: it declares {declared / 1e6:,.0f} MB of data in a file of "
                        f"{size / 1e6:,.3g} MB (a compressed archive, which PyTorch does not write)")


_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+=,@ ()[]")


def safe_component(name: str) -> str:
    """``name`` as one file name that stays in its folder: path separators, control and other
    unusual characters become ``_`` and a leading dot is dropped, so "../x" or "/etc" cannot
    climb out. A name that had to change gets a short digest of the original, so that two names
    which differ stay apart."""
    cleaned = "".join(ch if ch in _SAFE else "_" for ch in name).lstrip(". ") or "_"
    if cleaned == name:
        return name
    return f"{cleaned[:100]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def within(folder: Path, path: Path) -> Path:
    """``path``, refused unless it lies inside ``folder`` (a last check on names made from data)."""
    if not Path(path).resolve().is_relative_to(Path(folder).resolve()):
        raise UserError(f"refused to write {path}: it lies outside the output folder {folder}")
    return path


def fingerprint(path: Path) -> str:
    """``size:<bytes>:sha256:<16 hex>`` over the size and the first and last MiB.

    Enough to tell two weights or checkpoint files apart in a second even for
    GB-sized files; it is an identity check, not a tamper-proof digest.
    """
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(_FINGERPRINT_CHUNK))
        if size > _FINGERPRINT_CHUNK:
            handle.seek(max(_FINGERPRINT_CHUNK, size - _FINGERPRINT_CHUNK))
            digest.update(handle.read())
    return f"size:{size}:sha256:{digest.hexdigest()[:16]}"
