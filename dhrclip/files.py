"""Files: atomic writes, JSON, code-free torch loading and cheap file fingerprints.

Nothing here imports torch at module level, so the dataset indexers can use
it without loading the model stack.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .errors import UserError

_FINGERPRINT_CHUNK = 1 << 20


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write through ``write(file_object)`` into a temporary file, then rename over ``path``,
    so a crash or kill leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give what any new file gets
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2).encode()))


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file, with a one-line error naming ``what`` it should have been."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise UserError(f"{what} {path} not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path} is not valid JSON ({exc})") from exc


def safe_torch_load(path: Path, what: str) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, so a
    crafted file is refused and cannot run code when it is opened."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"refused to load {path}: it holds objects other than tensors and plain data, "
                        f"and loading it could run code") from exc
    except Exception as exc:
        raise UserError(f"cannot read {what} {path}: corrupt or not a PyTorch file ({type(exc).__name__})") from exc


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
