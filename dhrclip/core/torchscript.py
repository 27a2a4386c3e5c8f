"""The tensors of a TorchScript archive, read as data: none of the archive's code ever runs.

OpenAI distributes CLIP as TorchScript archives (``ViT-L-14-336px.pt``). ``torch.jit.load``
would rebuild the scripted modules and call their ``__setstate__``, which a crafted archive can
use to run anything. Here ``data.pkl`` is read by a restricted unpickler instead: tensor
rebuilds and storages are allowed, every scripted class (``__torch__.*``) becomes an inert holder
of its pickled attributes, and any other global is refused. The module tree is then walked into
a state dict with the usual dotted names. Storages must declare no more bytes than the file
holds, so a small file cannot make the reader allocate gigabytes.
"""
from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
# Helpers TorchScript's pickler uses for typed lists; each only builds a list.
_LIST_BUILDERS = {"build_intlist", "build_floatlist", "build_boollist", "build_doublelist", "build_tensorlist"}


class _Inert:
    """A scripted object rebuilt as data: it keeps its pickled state and has no behaviour."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _StorageKind:
    """What a ``torch.<Name>Storage`` global stands for here: only its dtype."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: Any, archive: zipfile.ZipFile, prefix: str, byte_budget: int) -> None:
        super().__init__(data)
        self._archive = archive
        self._prefix = prefix
        self._budget = byte_budget
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return type(name, (_Inert,), {})
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch.jit._pickle" and name in _LIST_BUILDERS:
            return list
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageKind(_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a weights file has no need of")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageKind) and isinstance(pid[2], str)
                and isinstance(pid[4], int) and pid[4] >= 0):
            raise pickle.UnpicklingError(f"malformed storage record {str(pid)[:80]}")
        _, kind, key, _, numel = pid
        if key in self._storages:
            return self._storages[key]
        name = f"{self._prefix}data/{key}"
        size = numel * kind.dtype.itemsize
        try:
            info = self._archive.getinfo(name)
        except KeyError as exc:
            raise pickle.UnpicklingError(f"storage {key} is missing") from exc
        if info.file_size != size:
            raise pickle.UnpicklingError(f"storage {key} declares {size} bytes but holds {info.file_size}")
        self._budget -= size
        if self._budget < 0:
            raise pickle.UnpicklingError("its storages declare more bytes than the file holds")
        buffer = bytearray(self._archive.read(name))
        storage = torch.frombuffer(buffer, dtype=kind.dtype) if numel else torch.empty(0, dtype=kind.dtype)
        self._storages[key] = storage
        return storage


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> torch.Tensor:
    """A view into a flat storage, checked to stay inside it (no read past the end)."""
    if not (isinstance(storage, torch.Tensor) and isinstance(offset, int) and offset >= 0
            and isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
            and all(isinstance(v, int) and v >= 0 for v in (*size, *stride))):
        raise pickle.UnpicklingError("malformed tensor record")
    if 0 not in size and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.numel():
        raise pickle.UnpicklingError("a tensor reaches past the end of its storage")
    return storage.as_strided(size, stride, offset)


def _rebuild_parameter(data: Any, *rest: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("malformed parameter record")
    return data


def _collect(obj: Any, prefix: str, out: dict[str, torch.Tensor], depth: int = 0) -> None:
    """Dotted names of every tensor attribute in the module tree, as ``state_dict()`` names them."""
    if isinstance(obj, torch.Tensor):
        out[prefix.removesuffix(".")] = obj
    elif isinstance(obj, _Inert) and isinstance(obj.state, dict) and depth < 64:
        for name, value in obj.state.items():
            if isinstance(name, str):
                _collect(value, f"{prefix}{name}.", out, depth + 1)


def is_torchscript_archive(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (code and constants beside the pickled data)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def read_torchscript_tensors(path: Path) -> dict[str, torch.Tensor]:
    """State dict of the module pickled in a TorchScript archive, without executing any of it.

    Tensors are copied out of the archive, so they own their memory. Any damage, and any
    global a weights file has no need of, ends in one ``UserError`` naming the file.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            roots = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
            if len(roots) != 1:
                raise pickle.UnpicklingError("it has no single <name>/data.pkl")
            prefix = roots[0].removesuffix("data.pkl")
            order = prefix + "byteorder"
            if order in archive.namelist() and archive.read(order).strip() != b"little":
                raise pickle.UnpicklingError("its tensors are stored big-endian")
            with archive.open(roots[0]) as data:
                root = _Unpickler(data, archive, prefix, path.stat().st_size).load()
    except UserError:
        raise
    except (pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot read weights file {path}: {exc}", field="pretrained") from exc
    except (Exception, RecursionError) as exc:  # a crafted pickle can fail in any of pickle's own ways
        raise UserError(f"cannot read weights file {path}: corrupt ({type(exc).__name__})",
                        field="pretrained") from exc
    state: dict[str, torch.Tensor] = {}
    _collect(root, "", state)
    if not state:
        raise UserError(f"weights file {path} holds no tensors", field="pretrained")
    return {name: tensor.clone() for name, tensor in state.items()}

