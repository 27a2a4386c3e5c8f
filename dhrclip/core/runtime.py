"""Device, precision and seeding."""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from ..config import PRECISIONS
from ..errors import UserError

_DTYPES = dict(zip(PRECISIONS, (torch.float32, torch.float16, torch.bfloat16)))


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"device {name} is not a device (use auto, cpu, cuda or cuda:N)", field="device") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name} asked for CUDA, but this PyTorch finds no CUDA GPU; use device cpu",
                        field="device")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {name} asked for Apple's MPS, which this machine or PyTorch lacks; use device cpu",
                        field="device")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"device {name} is not supported (use auto, cpu, cuda, cuda:N or mps)", field="device")
    return device


def resolve_precision(name: str | None, device: torch.device) -> torch.dtype:
    """bf16 by default on CUDA, fp32 on the CPU."""
    if name is None or name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise UserError(f"precision {name!r} is not one of {', '.join(PRECISIONS)}", field="precision")
    return _DTYPES[name]


def exporting() -> bool:
    """Whether torch.export is tracing this call (a question older torch releases cannot ask)."""
    check = getattr(torch.compiler, "is_exporting", None)
    return bool(check and check())


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for the backbone; a no-op in fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> torch.Generator:
    """Seed every RNG and return the generator that orders training batches."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
