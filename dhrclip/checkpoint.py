"""Prompt checkpoints: atomic writes, code-free loading, reference compatibility."""
from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .prompts import PromptLearner

_EPOCH_FILE = re.compile(r"epoch_(\d+)\.pth$")


def atomic_write(path: Path, write: Any) -> None:
    """Write through ``write(file_object)`` into a temporary file, then rename over ``path``,
    so a crash or kill leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2).encode()))


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def latest_checkpoint(directory: Path) -> Path | None:
    """The ``epoch_N.pth`` with the highest N in ``directory``, if any."""
    found = [(int(m.group(1)), p) for p in Path(directory).glob("epoch_*.pth") if (m := _EPOCH_FILE.search(p.name))]
    return max(found)[1] if found else None


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file, or the latest ``epoch_N.pth`` of a directory."""
    path = Path(path)
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise UserError(f"no epoch_N.pth checkpoint in {path}; pass --checkpoint_path with a file")
        return latest
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    return path


def safe_torch_load(path: Path, what: str) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, so a
    crafted file is refused and cannot run code when it is opened."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"refused to load {path}: it holds objects other than tensors and plain data, "
                        f"and loading it could run code") from exc
    except Exception as exc:
        raise UserError(f"cannot read {what} {path}: corrupt or not a PyTorch file ({type(exc).__name__})") from exc


def read_checkpoint(path: Path) -> dict:
    """Load a prompt checkpoint (file, or the latest in a folder) without running code."""
    path = resolve_checkpoint(path)
    state = safe_torch_load(path, "checkpoint")
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a prompt checkpoint (expected a dict with 'prompt_learner')")
    state["path"] = str(path)
    return state


def load_prompts(prompts: PromptLearner, checkpoint: dict) -> None:
    """Load ``checkpoint['prompt_learner']`` (ours, the reference's or AnomalyCLIP's).

    Unused reference tensors (``compound_prompt_projections.*``, token
    buffers) are ignored; a shape that does not fit the flags is an error
    naming the flag.
    """
    path = checkpoint.get("path", "checkpoint")
    state = checkpoint.get("prompt_learner", checkpoint)
    if not isinstance(state, dict) or "ctx_pos" not in state or "ctx_neg" not in state:
        raise UserError(f"{path} has no prompt_learner with ctx_pos/ctx_neg: not a DHR-CLIP/AnomalyCLIP checkpoint")
    ctx = state["ctx_pos"]
    deep = sorted((int(k.split(".")[1]), v) for k, v in state.items() if k.startswith("compound_prompts_text."))
    found = {
        "width": ctx.shape[-1],
        "n_ctx": ctx.shape[-2],
        "depth": len(deep) + 1,
        "t_n_ctx": deep[0][1].shape[0] if deep else prompts.t_n_ctx,
    }
    expected = {"width": prompts.width, "n_ctx": prompts.n_ctx, "depth": prompts.depth, "t_n_ctx": prompts.t_n_ctx}
    for name, value in expected.items():
        if found[name] != value:
            flag = "the backbone's text width (--model/--pretrained)" if name == "width" else f"--{name} {value}"
            raise UserError(f"{path} was trained with {name}={found[name]}, which does not fit {flag}")
    wanted = {"ctx_pos": state["ctx_pos"], "ctx_neg": state["ctx_neg"]}
    wanted.update({f"compound_prompts_text.{i}": v for i, v in deep})
    try:
        prompts.load_state_dict({k: v.reshape(prompts.state_dict()[k].shape) for k, v in wanted.items()})
    except RuntimeError as exc:
        raise UserError(f"{path} does not fit the prompt learner: {exc}") from exc
