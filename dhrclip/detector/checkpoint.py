"""Prompt checkpoints: finding, reading and writing them, and loading their prompts.

A checkpoint of this project is ``{"prompt_learner", "config", "optimizer",
"generator", "epoch", "train_config"}``; ``config`` is ``ModelConfig.to_dict()``.
The authors' and AnomalyCLIP's checkpoints hold only ``prompt_learner``; they
load too (their unused projections are ignored), and ``config`` is then None.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from ..errors import UserError
from ..files import atomic_write, safe_torch_load
from ..core.prompts import PromptLearner

_EPOCH_FILE = re.compile(r"epoch_(\d+)\.pth$")


@dataclass
class Checkpoint:
    """A prompt checkpoint as read from disk."""

    path: Path
    prompts: dict[str, torch.Tensor]    # the prompt_learner state
    config: ModelConfig | None          # None for the authors' and AnomalyCLIP's checkpoints
    state: dict[str, Any]               # everything else it holds (optimizer, epoch, ...)

    def prompt_shapes(self) -> dict[str, int]:
        """n_ctx, depth and t_n_ctx as the prompt tensors have them (no t_n_ctx without deep prompts)."""
        deep = self.deep_prompts()
        shapes = {"n_ctx": int(self.prompts["ctx_pos"].shape[-2]), "depth": len(deep) + 1}
        return {**shapes, "t_n_ctx": int(deep[0].shape[0])} if deep else shapes

    def deep_prompts(self) -> list[torch.Tensor]:
        found = sorted((int(k.split(".")[1]), v) for k, v in self.prompts.items()
                       if k.startswith("compound_prompts_text."))
        return [v for _, v in found]


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
            raise UserError(f"no epoch_N.pth checkpoint in {path}; give a checkpoint file", field="checkpoint_path")
        return latest
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}", field="checkpoint_path")
    return path


def read_checkpoint(path: Path) -> Checkpoint:
    """Load a prompt checkpoint (a file, or the latest in a folder) without running code."""
    path = resolve_checkpoint(path)
    state = safe_torch_load(path, "checkpoint")
    prompts = state.get("prompt_learner", state) if isinstance(state, dict) else None
    if not isinstance(prompts, dict) or "ctx_pos" not in prompts or "ctx_neg" not in prompts:
        raise UserError(f"{path} has no prompt_learner with ctx_pos/ctx_neg: not a DHR-CLIP/AnomalyCLIP checkpoint",
                        field="checkpoint_path")
    saved = state.get("config")
    config = ModelConfig.from_dict(saved, where=str(path)) if isinstance(saved, dict) else None
    rest = {k: v for k, v in state.items() if k not in ("prompt_learner", "config")}
    return Checkpoint(path=path, prompts=prompts, config=config, state=rest)


def load_prompts(prompts: PromptLearner, checkpoint: Checkpoint) -> None:
    """Copy the checkpoint's prompt tensors into ``prompts``; a shape that does not fit is
    an error naming the setting."""
    found = {"width": int(checkpoint.prompts["ctx_pos"].shape[-1]), **checkpoint.prompt_shapes()}
    expected = {"width": prompts.width, "n_ctx": prompts.n_ctx, "depth": prompts.depth, "t_n_ctx": prompts.t_n_ctx}
    for name, value in expected.items():
        if found.get(name, value) != value:
            if name == "width":
                raise UserError(f"{checkpoint.path} was trained on a backbone of text width {found[name]}, but model "
                                f"has width {value}; use the backbone it was trained with", field="model")
            raise UserError(f"{checkpoint.path} was trained with {name}={found[name]}, which does not fit "
                            f"{name}={value}", field=name)
    wanted = {"ctx_pos": checkpoint.prompts["ctx_pos"], "ctx_neg": checkpoint.prompts["ctx_neg"]}
    wanted.update({f"compound_prompts_text.{i}": v for i, v in enumerate(checkpoint.deep_prompts())})
    own = prompts.state_dict()
    try:
        prompts.load_state_dict({k: v.reshape(own[k].shape) for k, v in wanted.items()})
    except RuntimeError as exc:
        raise UserError(f"{checkpoint.path} does not fit the prompt learner: {exc}") from exc
