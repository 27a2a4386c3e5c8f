"""Run an exported detector (``export.py``) with numpy, Pillow and onnxruntime alone: no PyTorch.

    detector = OnnxDetector("model.onnx")
    result = detector.predict("part.png")   # .anomaly_map at the image's size, .score, .decision

Images of any size and mode are read as everywhere in the project (``dhrclip.images``), resized to
the file's T×T canvas (bicubic, as the PyTorch path does), run, and the maps resized back to each
image's size (bilinear, as ``cv2.INTER_LINEAR`` does). Decisions use the thresholds stored in the file,
unless others are given.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ModelConfig
from ..errors import UserError
from ..data.images import ImageSource, canvas_array, image_from_source

META_PREFIX = "dhrclip."


@dataclass
class OnnxPrediction:
    """One image's result, as ``inference.Prediction``."""

    anomaly_map: np.ndarray      # (H, W) float32 at the image's own size, smoothed, not normalised
    score: float
    grid: tuple[int, int] = (0, 0)

    @property
    def map_max(self) -> float:
        return float(self.anomaly_map.max())


def resize_bilinear(amap: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres and edge clamping, the interpolation of
    ``cv2.resize(..., INTER_LINEAR)`` that the PyTorch path uses."""
    def axis(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.maximum((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0.0)
        low = np.minimum(np.floor(pos).astype(np.int64), size_in - 1)
        high = np.minimum(low + 1, size_in - 1)
        return low, high, (pos - low).astype(np.float32)

    y0, y1, fy = axis(amap.shape[0], height)
    x0, x1, fx = axis(amap.shape[1], width)
    top = amap[y0][:, x0] * (1 - fx) + amap[y0][:, x1] * fx
    bottom = amap[y1][:, x0] * (1 - fx) + amap[y1][:, x1] * fx
    return (top * (1 - fy)[:, None] + bottom * fy[:, None]).astype(np.float32)


class OnnxDetector:
    """An exported detector: its graph in onnxruntime and its settings from the file's metadata."""

    def __init__(self, path: str | Path, providers: list[str] | None = None) -> None:
        """``providers``: onnxruntime execution providers (default: the CPU)."""
        try:
            import onnxruntime
        except ImportError as exc:
            raise UserError("running an ONNX file needs onnxruntime: pip install '.[deploy]'") from exc
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"onnx {path}: no such file", field="onnx")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: fp16 graphs make the CPU provider chatty
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=providers or
                                                        ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own error types
            raise UserError(f"onnx {path} is not a model onnxruntime can load ({exc})", field="onnx") from exc
        raw = self.session.get_modelmeta().custom_metadata_map
        meta = {k[len(META_PREFIX):]: v for k, v in raw.items() if k.startswith(META_PREFIX)}
        if "config" not in meta or "canvas" not in meta:
            raise UserError(f"onnx {path} was not written by export.py (no dhrclip metadata)", field="onnx")
        self.metadata = meta
        self.config = ModelConfig.from_dict(json.loads(meta["config"]), where=str(path))
        self.canvas = int(meta["canvas"])
        self.thresholds = json.loads(meta.get("thresholds", "null")) or {}
        for key, value in self.thresholds.items():
            if value is not None and not (isinstance(value, (int, float)) and np.isfinite(value)):
                raise UserError(f"onnx {path}: its stored {key} {value!r} is not a finite number", field="onnx")
        self.checkpoint = meta.get("checkpoint") or None
        self.checkpoint_fingerprint = meta.get("checkpoint_fingerprint") or None
        reference = json.loads(meta.get("reference", "null"))
        self.reference_digest = reference["digest"] if reference else None
        self.reference_sources: list[str] = reference["images"] if reference else []
        self.reference = None  # a bank, if any, is inside the graph
        tiles = self.config.tiles_per_side
        self.grid = (tiles, tiles)

    @property
    def image_threshold(self) -> float | None:
        return self.thresholds.get("image_threshold")

    @property
    def pixel_threshold(self) -> float | None:
        return self.thresholds.get("pixel_threshold")

    def run(self, canvases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (B, 3, T, T) canvases -> (B, T, T) maps and (B,) scores."""
        maps, scores = self.session.run(None, {"canvas": np.ascontiguousarray(canvases, dtype=np.uint8)})
        return maps, scores

    def iter_predictions(self, sources: list[ImageSource], batch_size: int = 8, num_workers: int | str = 0,
                         desc: str = "predicting", bit_depth: int | None = None, skip_errors: bool = False,
                         grid: str = "fixed", max_tiles: int = 9, exclude: list[int] | None = None
                         ) -> Iterator[tuple[int, OnnxPrediction | str]]:
        """(position, OnnxPrediction or why the image could not be read) for every source, in
        batches; the same contract as ``DHRCLIP.iter_predictions`` on the fixed grid."""
        if grid != "fixed":
            raise UserError("an ONNX file holds the fixed T×T canvas; grid auto needs the PyTorch model",
                            field="grid")
        if exclude is not None and any(k >= 0 for k in exclude):
            raise UserError("an exported bank cannot leave an image out; calibrate with the PyTorch model",
                            field="calibrate_on")
        for start in range(0, len(sources), batch_size):
            canvases, kept, sizes = [], [], []
            for i in range(start, min(start + batch_size, len(sources))):
                try:
                    image = image_from_source(sources[i], bit_depth)
                except UserError as exc:
                    if not skip_errors:
                        raise
                    yield i, str(exc)
                    continue
                canvases.append(canvas_array(image, self.canvas))
                kept.append(i)
                sizes.append((image.height, image.width))
            if not kept:
                continue
            maps, scores = self.run(np.stack(canvases))
            for k, i in enumerate(kept):
                if not (np.isfinite(maps[k]).all() and np.isfinite(scores[k])):
                    name = sources[i] if isinstance(sources[i], (str, Path)) else f"image {i}"
                    raise UserError(f"the anomaly map of {name} contains NaN or Inf; an fp16 export may "
                                    f"overflow where fp32 does not", field="onnx")
                yield i, OnnxPrediction(resize_bilinear(maps[k], *sizes[k]), float(scores[k]), self.grid)

    def predict(self, images: ImageSource | list[ImageSource], batch_size: int = 8
                ) -> OnnxPrediction | list[OnnxPrediction]:
        """Maps (at each image's own size) and scores: one image gives one result, a list a list."""
        single = not isinstance(images, (list, tuple))
        sources = [images] if single else list(images)
        results: list[OnnxPrediction | None] = [None] * len(sources)
        for i, result in self.iter_predictions(sources, batch_size):
            results[i] = result
        return results[0] if single else results

    def decide(self, result: OnnxPrediction) -> str:
        """'anomalous', 'normal', or '' without thresholds, by the file's thresholds."""
        return decide(result.score, result.map_max, self.image_threshold, self.pixel_threshold)


def decide(score: float, peak: float, image_t: float | None, pixel_t: float | None) -> str:
    """'anomalous', 'normal', or '' when no threshold is known: anomalous when the image score
    exceeds the image threshold or the map exceeds the pixel threshold anywhere."""
    if image_t is None and pixel_t is None:
        return ""
    flagged = (image_t is not None and score > image_t) or (pixel_t is not None and peak > pixel_t)
    return "anomalous" if flagged else "normal"
