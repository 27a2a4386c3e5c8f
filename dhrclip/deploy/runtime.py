"""Run an exported detector (``export.py``) with numpy, Pillow and onnxruntime alone: no PyTorch.

    detector = OnnxDetector("model.onnx")
    result = detector.predict("part.png")   # .anomaly_map at the image's size, .score, .decision

Images of any size and mode are read as everywhere in the project (``data/images.py``), resized to
the file's T×T canvas (bicubic, as the PyTorch path does), run, and the maps resized back to each
image's size (bilinear, as ``cv2.INTER_LINEAR`` does). Decisions use the thresholds stored in the file,
unless others are given.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..config import RunOptions
from ..core.grid import grid_for
from ..data.images import ImageSource, canvas_array, image_from_source
from ..detector.results import Prediction, Thresholds, decide, predict_each
from ..detector.signature import Signature
from ..errors import UserError
from .metadata import read_metadata


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
    """An exported detector: its graph in onnxruntime and its settings from the file's metadata
    (``metadata``). It is a ``detector.results.Detector``: predict.py and calibration run it as
    they run the PyTorch model."""

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
        self.metadata = read_metadata(self.session.get_modelmeta().custom_metadata_map, self.path)
        self.config = self.metadata.config
        self.checkpoint = self.metadata.signature.checkpoint

    @property
    def stored_thresholds(self) -> Thresholds:
        """The thresholds stored at export (none known when the export had none)."""
        return self.metadata.thresholds

    @property
    def image_threshold(self) -> float | None:
        return self.metadata.thresholds.image

    @property
    def pixel_threshold(self) -> float | None:
        return self.metadata.thresholds.pixel

    @property
    def reference_sources(self) -> list[str]:
        """The images of the bank baked into the graph, if any."""
        return list(self.metadata.reference_images)

    @property
    def can_leave_out(self) -> bool:
        """False: a bank inside the graph cannot leave an image out."""
        return False

    def signature(self, run: RunOptions) -> Signature:
        """What the file was exported for; a run with another grid is refused when it runs."""
        return self.metadata.signature

    def run(self, canvases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (B, 3, T, T) canvases -> (B, T, T) maps and (B,) scores."""
        maps, scores = self.session.run(None, {"canvas": np.ascontiguousarray(canvases, dtype=np.uint8)})
        return maps, scores

    def iter_predictions(self, sources: Sequence[ImageSource], run: RunOptions | None = None,
                         skip_errors: bool = False, exclude: list[int] | None = None, desc: str = "predicting",
                         progress: bool = True) -> Iterator[tuple[int, Prediction | str]]:
        """(position, Prediction or why the image could not be read) for every source, in batches of
        ``run.batch_size``; the contract of ``DHRCLIP.iter_predictions``, on the file's grid."""
        run = run or RunOptions(grid=self.metadata.signature.grid["mode"])
        if not grid_for(run.grid, run.max_tiles, self.config).matches(self.metadata.signature.grid):
            raise UserError(f"this file was exported for the {self.metadata.signature.grid['mode']} grid; export "
                            f"again with the grid you ask for, or run it with its own", field="grid")
        if exclude is not None and any(k >= 0 for k in exclude):
            raise UserError("an exported bank cannot leave an image out; calibrate with the PyTorch model",
                            field="calibrate_on")
        tiles = (self.config.tiles_per_side,) * 2
        for start in range(0, len(sources), run.batch_size):
            canvases, kept, sizes = [], [], []
            for i in range(start, min(start + run.batch_size, len(sources))):
                try:
                    image = image_from_source(sources[i], run.bit_depth, run.max_pixels)
                except UserError as exc:
                    if not skip_errors:
                        raise
                    yield i, str(exc)
                    continue
                canvases.append(canvas_array(image, self.metadata.canvas))
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
                yield i, Prediction(resize_bilinear(maps[k], *sizes[k]), float(scores[k]), tiles)

    def predict(self, images: ImageSource | Sequence[ImageSource], batch_size: int = 8
                ) -> Prediction | list[Prediction]:
        """Maps (at each image's own size) and scores: one image gives one result, a list a list."""
        return predict_each(self, images, RunOptions(grid=self.metadata.signature.grid["mode"], batch_size=batch_size))

    def decide(self, result: Prediction) -> str:
        """'anomalous', 'normal', or '' without thresholds, by the file's thresholds."""
        return decide(result.score, result.map_max, self.image_threshold, self.pixel_threshold)
