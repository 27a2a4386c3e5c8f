"""``DHRCLIP``: the detector as users hold it, built from a configuration or restored from a
checkpoint with the settings it was trained with.

    model = DHRCLIP.from_checkpoint("runs/trained_on_mvtec/epoch_15.pth")
    result = model.predict("part.png")      # result.anomaly_map, result.score
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..core.backbone import is_weights_path, load_clip, uses_quick_gelu
from .checkpoint import Checkpoint, load_prompts, read_checkpoint
from ..config import DERIVED_FIELDS, GRID_MODES, ModelConfig, ResolvedConfig, is_bank_file, resolve_model_config
from ..data.canvases import ImageDataset
from ..data.images import ImageSource
from ..errors import UserError
from ..files import fingerprint
from ..core.fewshot import ReferenceBank
from .inference import Prediction, build_reference, canvas_for, iter_predictions
from ..core.network import DHRCLIPModel
from ..core.runtime import resolve_device, resolve_precision

log = logging.getLogger(__name__)


class DHRCLIP:
    """A DHR-CLIP anomaly detector: the network, its settings and their sources.

    ``model`` is the ``torch.nn.Module`` (frozen CLIP plus prompts); ``resolved``
    says where each setting came from (checkpoint, argument, default).
    """

    def __init__(self, model: DHRCLIPModel, resolved: ResolvedConfig, checkpoint: Path | None = None) -> None:
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

    def predict(self, images: ImageSource | list[ImageSource], batch_size: int = 8, num_workers: int = 0,
                grid: str = "auto", max_tiles: int = 9) -> Prediction | list[Prediction]:
        """Anomaly maps (at each image's own size, smoothed, not normalised) and image scores.

        ``images``: one image or a list of them, each a path, a PIL image or an
        (H, W, 3) uint8 array. A single image gives one ``Prediction``, a list a
        list. ``grid``: "auto" (a tile grid per image, at its own aspect ratio) or
        "fixed" (the T×T canvas). Values equal predict.py's for the same images,
        grid and batch size.
        """
        if grid not in GRID_MODES:
            raise UserError(f"grid must be one of {', '.join(GRID_MODES)}, got {grid!r}", field="grid")
        single = not isinstance(images, (list, tuple))
        sources = [images] if single else list(images)
        results: list[Prediction | None] = [None] * len(sources)
        for i, prediction in iter_predictions(self.model, sources, batch_size, num_workers, grid=grid,
                                              max_tiles=max_tiles):
            results[i] = prediction
        return results[0] if single else results

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

    def iter_predictions(self, sources: list[ImageSource], batch_size: int = 8, num_workers: int | str = 0,
                         desc: str = "predicting", bit_depth: int | None = None, skip_errors: bool = False,
                         grid: str = "auto", max_tiles: int = 9, exclude: list[int] | None = None
                         ) -> Iterator[tuple[int, Prediction | str]]:
        """(position, Prediction or the reason it failed) for every source, batch by batch
        (``inference.iter_predictions``); what predict.py runs, here or on an ONNX file."""
        return iter_predictions(self.model, sources, batch_size, num_workers, desc, bit_depth, skip_errors, grid,
                                max_tiles, exclude)

    @property
    def reference(self) -> ReferenceBank | None:
        """The few-shot bank whose map is added to the zero-shot one, if any."""
        return self.model.reference

    def with_reference(self, reference: ReferenceBank | str | Path | list[ImageSource], grid: str = "auto",
                       max_tiles: int = 9, batch_size: int = 8, num_workers: int = 0) -> DHRCLIP:
        """This detector with a few-shot bank (docs/method.md §11): its maps add each token's
        distance to the bank, and its scores mix in that map's maximum. ``reference``: a bank, a
        bank file written by ``ReferenceBank.save`` (.safetensors), or a list of good images (paths,
        PIL images or arrays). A bank must match this model's vision settings and ``grid``; this
        detector is left as it is."""
        if isinstance(reference, ReferenceBank):
            bank, where = reference, "bank"
        elif isinstance(reference, (str, Path)) and is_bank_file(reference):
            bank, where = ReferenceBank.load(Path(reference)), str(reference)
        else:
            sources = list(reference) if isinstance(reference, (list, tuple)) else [reference]
            names = [str(Path(s).resolve()) if isinstance(s, (str, Path)) else f"image {i}"
                     for i, s in enumerate(sources)]
            dataset = ImageDataset(sources, canvas_for(self.model, grid, max_tiles))
            bank, where = build_reference(self.model, dataset, batch_size, num_workers, names), "images"
        bank.check(self.config, grid, max_tiles, where)
        clone = copy.copy(self)
        clone.model = copy.copy(self.model)  # shares the network; only the bank differs
        clone.model.reference = bank.to(self.device)
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
           recorded: ModelConfig | None = None) -> DHRCLIPModel:
    """Load the backbone, record what it is (weights files by absolute path), check it against
    ``recorded``, and wrap it with fresh prompts."""
    target = resolve_device(device)
    dtype = resolve_precision(precision, target)
    config = resolved.config
    clip, weights = load_clip(config.model, config.pretrained)
    config = replace(config, quick_gelu=uses_quick_gelu(clip),
                     pretrained=str(weights.resolve()) if is_weights_path(config.pretrained) else config.pretrained,
                     weights_fingerprint=fingerprint(weights) if weights is not None else None)
    if recorded is not None:
        check_backbone(config, recorded)
    return DHRCLIPModel(clip, config, dtype).to(target)
