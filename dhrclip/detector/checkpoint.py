"""Prompt checkpoints: finding, writing and reading them, and loading their prompts.

A checkpoint of this project is ``{"prompt_learner", "config", "optimizer", "generator", "epoch",
"train_config"}``; ``config`` is ``ModelConfig.to_dict()``. The authors' and AnomalyCLIP's
checkpoints hold only ``prompt_learner``; they load too (their unused projections are ignored),
and ``config`` is then None.

``read_checkpoint`` is the one reader of the prompts and settings, ``read_resume_state`` of what
resuming needs besides; each checks every part it takes (tensor shapes and values, the settings,
the optimizer's and the generator's state) and ends any damage in one ``UserError`` naming the
file and the part. Files are opened without running code (``files.safe_torch_load``).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from ..config.fields import whole
from ..config.model import MAX_CONTEXT
from ..core.prompts import PromptLearner
from ..errors import UserError
from ..files import atomic_write, safe_torch_load

_EPOCH_FILE = re.compile(r"epoch_(\d+)\.pth$")
_DEEP = re.compile(r"compound_prompts_text\.(\d+)$")
MAX_WIDTH = 8192  # the text width of any CLIP


@dataclass
class Checkpoint:
    """A prompt checkpoint as read from disk, checked."""

    path: Path
    prompts: dict[str, torch.Tensor]    # ctx_pos, ctx_neg and compound_prompts_text.{i}
    config: ModelConfig | None          # None for the authors' and AnomalyCLIP's checkpoints
    state: dict[str, Any]               # everything else it holds (optimizer, epoch, ...)

    @property
    def width(self) -> int:
        return int(self.prompts["ctx_pos"].shape[-1])

    def prompt_shapes(self) -> dict[str, int]:
        """n_ctx, depth and t_n_ctx as the prompt tensors have them (no t_n_ctx without deep prompts)."""
        deep = self.deep_prompts()
        shapes = {"n_ctx": int(self.prompts["ctx_pos"].shape[-2]), "depth": len(deep) + 1}
        return {**shapes, "t_n_ctx": int(deep[0].shape[0])} if deep else shapes

    def deep_prompts(self) -> list[torch.Tensor]:
        found = sorted((int(m.group(1)), v) for k, v in self.prompts.items() if (m := _DEEP.match(k)))
        return [v for _, v in found]


@dataclass
class ResumeState:
    """What a checkpoint holds to continue its training run exactly."""

    optimizer: dict[str, Any]
    generator: torch.Tensor
    epoch: int
    train_config: dict[str, Any]


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
    if path.suffix.lower() == ".onnx":
        raise UserError(f"{path} is an ONNX file, an exported detector, not a prompt checkpoint; run it with `onnx`",
                        field="checkpoint_path")
    if path.suffix.lower() == ".json":
        raise UserError(f"{path} is a JSON file, not a prompt checkpoint (an epoch_N.pth, or the folder of a run)",
                        field="checkpoint_path")
    return path


def _refusal(path: Path, part: str, problem: str, field: str = "checkpoint_path") -> UserError:
    return UserError(f'checkpoint {path}: "{part}" {problem}', field=field)


def _prompt_tensor(path: Path, name: str, value: Any, dims: int) -> torch.Tensor:
    """A prompt tensor: float, finite, with at least ``dims`` dimensions, of sizes in range."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise _refusal(path, name, f"must be a float tensor, got {type(value).__name__}")
    if value.dim() < dims or value.shape[-1] > MAX_WIDTH or value.shape[-2] > MAX_CONTEXT or 0 in value.shape:
        raise _refusal(path, name, f"has shape {tuple(value.shape)}, not (…, words, width) with at most "
                                   f"{MAX_CONTEXT} words and width {MAX_WIDTH}")
    if not bool(torch.isfinite(value).all()):
        raise _refusal(path, name, "holds NaN or Inf: the training that wrote it diverged")
    return value


def _prompts(path: Path, state: Any) -> dict[str, torch.Tensor]:
    prompts = state.get("prompt_learner", state) if isinstance(state, Mapping) else None
    if not isinstance(prompts, Mapping) or "ctx_pos" not in prompts or "ctx_neg" not in prompts:
        raise UserError(f"{path} has no prompt_learner with ctx_pos/ctx_neg: not a DHR-CLIP/AnomalyCLIP checkpoint",
                        field="checkpoint_path")
    checked = {name: _prompt_tensor(path, name, prompts[name], 2) for name in ("ctx_pos", "ctx_neg")}
    if checked["ctx_pos"].shape != checked["ctx_neg"].shape:
        raise _refusal(path, "ctx_neg", f"has shape {tuple(checked['ctx_neg'].shape)}, unlike ctx_pos's "
                                       f"{tuple(checked['ctx_pos'].shape)}")
    width = checked["ctx_pos"].shape[-1]
    deep = {}
    for key, value in prompts.items():
        if not isinstance(key, str) or not key.startswith("compound_prompts_text"):
            continue  # the reference's unused projections, among others
        match = _DEEP.match(key)
        if match is None or int(match.group(1)) > 1000:
            raise _refusal(path, str(key), "is not a deep prompt of the form compound_prompts_text.<layer>")
        tensor = _prompt_tensor(path, key, value, 2)
        if tensor.dim() != 2 or tensor.shape[1] != width or tensor.shape[0] > checked["ctx_pos"].shape[-2]:
            raise _refusal(path, key, f"has shape {tuple(tensor.shape)}, not (t_n_ctx, {width})")
        deep[int(match.group(1))] = (key, tensor)
    if sorted(deep) != list(range(len(deep))) or len({t.shape for _, t in deep.values()}) > 1:
        raise _refusal(path, "compound_prompts_text", f"must be layers 0..{len(deep) - 1} of one shape, got layers "
                                                      f"{sorted(deep)}")
    return {**checked, **{key: tensor for key, tensor in deep.values()}}


def read_checkpoint(path: Path) -> Checkpoint:
    """Load a prompt checkpoint (a file, or the latest in a folder) without running code, every
    part checked."""
    path = resolve_checkpoint(path)
    state = safe_torch_load(path, "checkpoint")
    prompts = _prompts(path, state)
    saved = state.get("config") if isinstance(state, Mapping) else None
    if saved is not None and not isinstance(saved, Mapping):
        raise _refusal(path, "config", f"must be a mapping of settings, got {type(saved).__name__}")
    config = ModelConfig.from_dict(saved, where=f"checkpoint {path}") if saved is not None else None
    rest = {k: v for k, v in state.items() if k not in ("prompt_learner", "config")}
    checkpoint = Checkpoint(path=path, prompts=prompts, config=config, state=rest)
    if config is not None:
        shapes = checkpoint.prompt_shapes()
        for name, value in shapes.items():
            if getattr(config, name) != value:
                raise _refusal(path, f"config.{name}", f"is {getattr(config, name)}, but its prompt tensors have "
                                                      f"{name} {value}")
    return checkpoint


def read_resume_state(checkpoint: Checkpoint) -> ResumeState:
    """What resuming from ``checkpoint`` needs besides the prompts, every part checked."""
    state, path = checkpoint.state, checkpoint.path
    if "optimizer" not in state or "generator" not in state:
        raise UserError(f"{path} has no optimizer state (not written by this train.py); cannot resume from it",
                        field="resume")
    optimizer = state["optimizer"]
    if (not isinstance(optimizer, Mapping) or not isinstance(optimizer.get("state"), Mapping)
            or not isinstance(optimizer.get("param_groups"), list)
            or not all(isinstance(group, Mapping) and isinstance(group.get("params"), list)
                       for group in optimizer["param_groups"])):
        raise _refusal(path, "optimizer", "is not an optimizer's state (state and param_groups)", "resume")
    generator = state["generator"]
    if not isinstance(generator, torch.Tensor) or generator.dtype != torch.uint8 or generator.dim() != 1:
        raise _refusal(path, "generator", "is not a random generator's state (a 1-D byte tensor)", "resume")
    try:
        epoch = whole(state.get("epoch"), "epoch", 1, 10**6)
    except UserError as exc:
        raise _refusal(path, "epoch", str(exc).removeprefix("epoch "), "resume") from exc
    train_config = state.get("train_config", {})
    if not isinstance(train_config, Mapping):
        raise _refusal(path, "train_config", "must be a mapping of settings", "resume")
    return ResumeState(dict(optimizer), generator, epoch, dict(train_config))


def load_prompts(prompts: PromptLearner, checkpoint: Checkpoint) -> None:
    """Copy the checkpoint's prompt tensors into ``prompts``; a shape that does not fit is
    an error naming the setting."""
    found = {"width": checkpoint.width, **checkpoint.prompt_shapes()}
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
