"""``DHRCLIP``: the detector as users hold it, built from a configuration or restored from a
checkpoint with the settings it was trained with.

    model = DHRCLIP.from_checkpoint("runs/trained_on_mvtec/epoch_15.pth")
    result = model.predict("part.png")      # result.anomaly_map, result.score
"""
from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..config import (
    AUTO_GRID,
    DERIVED_FIELDS,
    ModelConfig,
    ResolvedConfig,
    RunOptions,
    is_bank_file,
    resolve_model_config,
)
from ..core.backbone import is_weights_path, load_clip, uses_quick_gelu
from ..core.fewshot import ReferenceBank
from ..core.grid import Grid, grid_for
from ..core.network import DHRCLIPNetwork
from ..core.runtime import resolve_device, resolve_precision
from ..data.canvases import CanvasDataset
from ..data.images import ImageSource
from ..errors import UserError
from ..files import fingerprint
from .bank import check_bank, read_bank
from .checkpoint import Checkpoint, load_prompts, read_checkpoint
from .inference import build_reference, iter_predictions
from .results import Prediction, Thresholds, predict_each
from .signature import Signature

log = logging.getLogger(__name__)

# How the Python API runs images unless told otherwise: as predict.py does, in this process.
API_RUN = RunOptions(grid=AUTO_GRID, num_workers=0)


class DHRCLIP:
    """A DHR-CLIP anomaly detector: the network, its settings and their sources.

    ``model`` is the ``torch.nn.Module`` (frozen CLIP plus prompts); ``resolved``
    says where each setting came from (checkpoint, argument, default).
    """

    def __init__(self, model: DHRCLIPNetwork, resolved: ResolvedConfig, checkpoint: Path | None = None) -> None:
        self.model = model
        self.resolved = resolved
        self.checkpoint = checkpoint

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def precision(self) -> torch.dtype:
        return self.model.precision

    @classmethod
    def create(cls, config: ModelConfig | None = None, device: str = "auto", precision: str | None = None,
               **overrides: Any) -> DHRCLIP:
        """A detector with fresh (untrained) prompts: ``config`` (default: the authors' settings)
        with ``overrides`` applied, e.g. ``DHRCLIP.create(features_list=[24])``."""
        given = {} if config is None else {k: v for k, v in config.to_dict().items()
                                           if k not in ("version", *DERIVED_FIELDS)}
        resolved = resolve_model_config({**given, **overrides})
        model = _build(resolved, device, precision)
        return cls(model, ResolvedConfig(model.config, resolved.sources))

    @staticmethod
    def resolve_config(checkpoint: str | Path | Checkpoint, pretrained: str | None = None,
                       **overrides: Any) -> ResolvedConfig:
        """The settings ``from_checkpoint`` would use, and where each comes from, without
        loading the backbone. ``overrides`` follow the rules of ``resolve_model_config``."""
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else read_checkpoint(Path(checkpoint))
        shapes = None if ckpt.config is not None else ckpt.prompt_shapes()
        resolved = resolve_model_config({**overrides, "pretrained": pretrained}, saved=ckpt.config,
                                        prompt_shapes=shapes)
        recorded = resolved.config.pretrained
        if pretrained is None and is_weights_path(recorded) and not Path(recorded).expanduser().is_file():
            raise UserError(f"{ckpt.path} was trained with the weights file {recorded}, which is not there; give "
                            f"pretrained as the path of the same weights", field="pretrained")
        return resolved

    @classmethod
    def from_checkpoint(cls, path: str | Path, pretrained: str | None = None, device: str = "auto",
                        precision: str | None = None, **overrides: Any) -> DHRCLIP:
        """Rebuild the detector a checkpoint was trained as, and load its prompts.

        Every setting defaults to what the checkpoint recorded (for the authors'
        and AnomalyCLIP's checkpoints: the authors' run-script settings with
        features_list [24]). ``pretrained`` defaults to the recorded weights.
        ``overrides``: test-time geometry (image_size, patch_image_size,
        target_image_size, tiles_per_side, sigma, alpha) may differ, and is
        logged; features_list and dpam may differ, with a warning; prompt shapes
        and backbone width may not. A weights file other than the one trained
        with is warned about.
        """
        ckpt = read_checkpoint(Path(path))
        resolved = cls.resolve_config(ckpt, pretrained, **overrides)
        model = _build(resolved, device, precision, recorded=ckpt.config)
        load_prompts(model.prompt_learner, ckpt)
        log.info("loaded %s", ckpt.path)
        return cls(model, ResolvedConfig(model.config, resolved.sources), checkpoint=ckpt.path)

    def predict(self, images: ImageSource | Sequence[ImageSource], run: RunOptions | None = None,
                **options: Any) -> Prediction | list[Prediction]:
        """Anomaly maps (at each image's own size, smoothed, not normalised) and image scores.

        ``images``: one image or a list of them, each a path, a PIL image or an
        (H, W, 3) uint8 array. A single image gives one ``Prediction``, a list a
        list. ``run``: how images are read, batched and placed (default ``API_RUN``: the auto
        grid, a tile grid per image at its own aspect ratio, in this process), or ``options``
        changing some of its fields: ``grid="fixed"`` (the T×T canvas), ``batch_size=16``, ...
        Values equal predict.py's for the same images, grid and batch size.
        """
        return predict_each(self, images, replace(run or API_RUN, **options))

    def grid_for(self, run: RunOptions) -> Grid:
        """The tile grid of ``run`` (its ``grid`` and ``max_tiles``) on this model's geometry."""
        return grid_for(run.grid, run.max_tiles, self.config)

    @property
    def checkpoint_fingerprint(self) -> str | None:
        """Size and hash of the checkpoint file, for threshold files and exports."""
        return fingerprint(self.checkpoint) if self.checkpoint else None

    @property
    def reference_sources(self) -> list[str]:
        """The images of the few-shot bank, if any."""
        return list(self.model.reference.sources) if self.model.reference is not None else []

    @property
    def reference_digest(self) -> str | None:
        """The identity of the few-shot bank, if any, for threshold files."""
        return self.model.reference.digest() if self.model.reference is not None else None

    @property
    def can_leave_out(self) -> bool:
        """Whether its bank's images can be scored without their own tokens: always, with a bank."""
        return self.model.reference is not None

    @property
    def stored_thresholds(self) -> Thresholds:
        """None: thresholds come with exported files, not with checkpoints."""
        return Thresholds()

    def signature(self, run: RunOptions) -> Signature:
        """What results of this detector on ``run``'s grid hold for: threshold files record it."""
        return Signature(self.config, self.grid_for(run).record(),
                         str(self.checkpoint) if self.checkpoint else None, self.checkpoint_fingerprint,
                         self.reference_digest)

    def iter_predictions(self, sources: Sequence[ImageSource], run: RunOptions = API_RUN, skip_errors: bool = False,
                         exclude: list[int] | None = None, desc: str = "predicting", progress: bool = True
                         ) -> Iterator[tuple[int, Prediction | str]]:
        """(position, Prediction or the reason it failed) for every source, batch by batch, with
        ``run``'s grid, reading and batching (``detector.inference.iter_predictions``); what
        predict.py runs, here or on an ONNX file."""
        return iter_predictions(self.model, sources, self.grid_for(run), run, desc, skip_errors, exclude, progress)

    @property
    def reference(self) -> ReferenceBank | None:
        """The few-shot bank whose map is added to the zero-shot one, if any."""
        return self.model.reference

    @property
    def bank(self) -> ReferenceBank:
        """The few-shot bank, which a detector from ``with_reference`` has."""
        if self.model.reference is None:
            raise UserError("this detector has no reference bank; make one with with_reference", field="reference")
        return self.model.reference

    def with_reference(self, reference: ReferenceBank | str | os.PathLike | Sequence[ImageSource],
                       run: RunOptions | None = None, **options: Any) -> DHRCLIP:
        """This detector with a few-shot bank (docs/method.md §11): its maps add each token's
        distance to the bank, and its scores mix in that map's maximum. ``reference``: a bank, a
        bank file written by ``ReferenceBank.save`` (.safetensors), or a list of good images (paths,
        PIL images or arrays), read with ``run``'s grid, batch size and workers (as in ``predict``).
        A bank must match this model's vision settings and the grid; this detector is left as it is."""
        run = replace(run or API_RUN, **options)
        if isinstance(reference, ReferenceBank):
            bank, where = reference, "bank"
        elif isinstance(reference, (str, os.PathLike)) and is_bank_file(reference):
            bank, where = read_bank(reference), str(reference)
        else:
            sources: list[ImageSource] = (list(reference) if isinstance(reference, (list, tuple))
                                          else [reference])  # type: ignore[list-item]
            names = [str(Path(s).resolve()) if isinstance(s, (str, Path)) else f"image {i}"
                     for i, s in enumerate(sources)]
            dataset = CanvasDataset(sources, self.grid_for(run), run)
            bank, where = build_reference(self.model, dataset, names), "images"
        check_bank(bank, self.config, self.model.token_width, self.grid_for(run), where)
        clone = copy.copy(self)
        clone.model = copy.copy(self.model)  # shares the network; only the bank differs
        clone.model.reference = bank.to(self.device)
        clone.model.reference.units  # noqa: B018 - computed now, outside any export's trace, which skips `exclude`
        return clone

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to rebuild this detector: prompts and settings."""
        return {"prompt_learner": self.model.prompt_learner.state_dict(), "config": self.config.to_dict()}


def check_backbone(built: ModelConfig, recorded: ModelConfig) -> None:
    """Refuse a backbone whose activation differs from the one the prompts were trained on; warn
    when its weights file is not the recorded one."""
    if recorded.quick_gelu is not None and built.quick_gelu is not None and recorded.quick_gelu != built.quick_gelu:
        trained, now = ("QuickGELU", "GELU") if recorded.quick_gelu else ("GELU", "QuickGELU")
        raise UserError(f"the prompts were trained on a {trained} backbone ({recorded.model}), but model "
                        f"{built.model} uses {now}; use the architecture they were trained with", field="model")
    if recorded.weights_fingerprint is not None and built.weights_fingerprint != recorded.weights_fingerprint:
        log.warning("pretrained %s is not the file the prompts were trained with (%s, %s): if it holds the same "
                    "weights in another format, ignore this; otherwise the maps will differ from training's",
                    built.pretrained, recorded.pretrained, recorded.weights_fingerprint)


def _build(resolved: ResolvedConfig, device: str, precision: str | None,
           recorded: ModelConfig | None = None) -> DHRCLIPNetwork:
    """Load the backbone, record what it is (weights files by absolute path), check it against
    ``recorded``, and wrap it with fresh prompts."""
    target = resolve_device(device)
    dtype = resolve_precision(precision, target)
    config = resolved.config
    clip, weights = load_clip(config.model, config.pretrained)
    config = replace(config, quick_gelu=uses_quick_gelu(clip),
                     pretrained=str(weights.resolve()) if weights is not None else config.pretrained,
                     weights_fingerprint=fingerprint(weights) if weights is not None else None)
    if recorded is not None:
        check_backbone(config, recorded)
    return DHRCLIPNetwork(clip, config, dtype).to(target)
