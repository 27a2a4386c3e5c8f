"""An exported file's metadata: what the ONNX runtime needs besides the graph, written once by
``export`` and read back by one validating reader. Torch-free.

The properties are ``dhrclip.<name>``: the project's version, the model settings, the grid, the
canvas the graph takes, the precision, the checkpoint, the thresholds and the baked few-shot
bank. Any damage ends in one ``UserError`` naming the file and the property.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DEFAULT_MAX_TILES, EXPORT_PRECISIONS, ModelConfig
from ..config.fields import number
from ..config.model import MAX_SIDE
from ..core.grid import grid_for
from ..detector.results import Thresholds
from ..detector.signature import Signature, read_grid_record
from ..errors import UserError

PREFIX = "dhrclip."


@dataclass(frozen=True)
class OnnxMetadata:
    """What an exported file records of itself."""

    version: str
    signature: Signature             # settings, grid, checkpoint and bank it was exported with
    canvas: int                      # the side of the fixed grid's (B, 3, T, T) canvas
    precision: str
    thresholds: Thresholds           # stored at export; none known when both are None
    reference_images: list[str]      # the baked bank's images
    patch: int | None = None         # the backbone's patch size (the auto grid's global view needs it)
    width: int | None = None         # the vision tower's width (the CPU runtime splits batches by it)

    @property
    def config(self) -> ModelConfig:
        """The model settings it was exported with (an export always records them)."""
        if self.signature.config is None:
            raise ValueError("an exported file's signature holds its settings")
        return self.signature.config

    def to_properties(self) -> dict[str, str]:
        """The file's metadata properties, every value a string."""
        signature = self.signature
        fields = {
            "version": self.version,
            "config": json.dumps(self.config.to_dict()),
            "grid": json.dumps(signature.grid),
            "canvas": str(self.canvas),
            "patch": str(self.patch or ""),
            "width": str(self.width or ""),
            "precision": self.precision,
            "checkpoint": signature.checkpoint or "",
            "checkpoint_fingerprint": signature.checkpoint_fingerprint or "",
            "thresholds": json.dumps({"image_threshold": self.thresholds.image,
                                      "pixel_threshold": self.thresholds.pixel} if self.thresholds.known else None),
            "reference": json.dumps({"digest": signature.reference, "images": self.reference_images}
                                    if signature.reference else None),
        }
        return {PREFIX + key: value for key, value in fields.items()}


def read_metadata(properties: Mapping[str, str], path: Path) -> OnnxMetadata:
    """The metadata of the file at ``path`` from its properties, every one checked."""
    where = f"onnx {path}"
    meta = {k[len(PREFIX):]: v for k, v in properties.items() if k.startswith(PREFIX)}
    if "config" not in meta or "canvas" not in meta:
        raise UserError(f"{where} was not written by export.py (no dhrclip metadata)", field="onnx")

    def refuse(key: str, problem: str) -> UserError:
        return UserError(f'{where}: metadata "{key}" {problem}', field="onnx")

    config_data = _json(meta, "config", refuse)
    if not isinstance(config_data, Mapping):
        raise refuse("config", f"must be a mapping of settings, got {config_data!r:.60}")
    try:
        config = ModelConfig.from_dict(config_data, where=where)
    except UserError as exc:
        raise UserError(str(exc), field="onnx") from exc
    grid = read_grid_record(_json(meta, "grid", refuse, "null"), where, "onnx")
    raw = meta["canvas"]
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_SIDE:
        raise refuse("canvas", f"must be a whole number of pixels from 1 to {MAX_SIDE}, got {raw!r:.40}")
    canvas = int(raw)
    patch, width = (_optional_whole(meta, key, refuse) for key in ("patch", "width"))
    if patch is None and not grid_for(grid["mode"], grid.get("max_tiles", DEFAULT_MAX_TILES), config).uniform:
        raise refuse("patch", "is needed by a file of the auto grid (the backbone's patch size)")
    precision = meta.get("precision", "fp32")
    if precision not in EXPORT_PRECISIONS:
        raise refuse("precision", f"must be one of {', '.join(EXPORT_PRECISIONS)}, got {precision!r:.40}")
    thresholds = _thresholds(_json(meta, "thresholds", refuse, "null"), refuse)
    reference = _json(meta, "reference", refuse, "null")
    digest, images = None, []
    if reference is not None:
        if (not isinstance(reference, Mapping) or not isinstance(reference.get("digest"), str)
                or not reference["digest"] or not isinstance(reference.get("images"), list)
                or not all(isinstance(i, str) for i in reference["images"])):
            raise refuse("reference", "must be null or a record with a digest and a list of images")
        digest, images = reference["digest"], list(reference["images"])
    signature = Signature(config, grid, meta.get("checkpoint") or None, meta.get("checkpoint_fingerprint") or None,
                          digest)
    return OnnxMetadata(meta.get("version", ""), signature, canvas, precision, thresholds, images, patch, width)


def _optional_whole(meta: Mapping[str, str], key: str, refuse: Any) -> int | None:
    """A property that is a whole number from 1 to ``MAX_SIDE``, or absent (files of older releases)."""
    raw = meta.get(key, "")
    if raw and (not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_SIDE):
        raise refuse(key, f"must be a whole number from 1 to {MAX_SIDE}, got {raw!r:.40}")
    return int(raw) if raw else None


def _json(meta: Mapping[str, str], key: str, refuse: Any, default: str | None = None) -> Any:
    text = meta.get(key, default)
    try:
        return json.loads(text, parse_constant=_no_constant) if text is not None else None
    except (ValueError, RecursionError) as exc:
        raise refuse(key, "is not valid JSON") from exc


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _thresholds(value: Any, refuse: Any) -> Thresholds:
    if value is None:
        return Thresholds()
    if not isinstance(value, Mapping) or set(value) - {"image_threshold", "pixel_threshold"}:
        raise refuse("thresholds", "must be null or a record of image_threshold and pixel_threshold")
    try:
        return Thresholds(*(None if value.get(k) is None else number(value[k], k)
                            for k in ("image_threshold", "pixel_threshold")))
    except UserError as exc:
        raise refuse("thresholds", f"holds {exc}") from exc
