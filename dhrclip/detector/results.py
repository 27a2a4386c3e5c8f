"""What a detector gives for an image, and how it is decided and tabulated, for the PyTorch model
and an exported ONNX file alike: the ``Prediction`` record, the decision rule, predictions.csv's
rows, and the ``Detector`` protocol both runtimes satisfy. Torch-free.

Decision: an image is anomalous when its image score exceeds the image threshold, or when its
anomaly map exceeds the pixel threshold anywhere (a localised defect is a defect even when the
global score misses it).
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..config import ModelConfig, RunOptions
from ..data.images import ImageSource
from ..errors import UserError
from .signature import Signature

CSV_FIELDS = ("path", "image_score", "map_max", "decision", "rows", "cols", "error")


@dataclass(frozen=True)
class Outcome:
    """What a table row records of a result: its image score, map maximum and tile grid."""

    score: float
    map_max: float
    grid: tuple[int, int]


@dataclass
class Prediction:
    """One image's result."""

    anomaly_map: np.ndarray      # (H, W) float32 at the image's own size, smoothed, not normalised
    score: float                 # image-level anomaly score, P(anomalous)
    grid: tuple[int, int] = (0, 0)  # (rows, cols) of the tiles it was seen through

    @property
    def map_max(self) -> float:
        return float(self.anomaly_map.max())

    @property
    def outcome(self) -> Outcome:
        return Outcome(self.score, self.map_max, self.grid)


@dataclass(frozen=True)
class Thresholds:
    """An image-score threshold and a map threshold; either may be unknown."""

    image: float | None = None
    pixel: float | None = None

    def replaced(self, image: float | None = None, pixel: float | None = None) -> Thresholds:
        """These thresholds with those given (not None) taking their place."""
        return Thresholds(self.image if image is None else image, self.pixel if pixel is None else pixel)

    @property
    def known(self) -> bool:
        return self.image is not None or self.pixel is not None


NO_THRESHOLDS = Thresholds()


def decide(score: float, peak: float, image_t: float | None, pixel_t: float | None) -> str:
    """'anomalous', 'normal', or '' when no threshold is known: anomalous when the image score
    exceeds the image threshold or the map exceeds the pixel threshold anywhere."""
    if image_t is None and pixel_t is None:
        return ""
    flagged = (image_t is not None and score > image_t) or (pixel_t is not None and peak > pixel_t)
    return "anomalous" if flagged else "normal"


def table_row(path: str, result: Outcome | None, error: str, thresholds: Thresholds) -> dict:
    """One row of predictions.csv (``CSV_FIELDS``): an image's score, map maximum, decision at
    ``thresholds`` and tile grid; an image not inspected (``result`` None) has only its ``error``."""
    if result is None:
        return {"path": path, "image_score": None, "map_max": None, "decision": "", "rows": None, "cols": None,
                "error": error}
    return {"path": path, "image_score": result.score, "map_max": result.map_max,
            "decision": decide(result.score, result.map_max, thresholds.image, thresholds.pixel),
            "rows": result.grid[0], "cols": result.grid[1], "error": error}


def map_file_name(relative: Path) -> Path:
    """Where the map of the image at ``relative`` goes under maps/: a.png as a_png.npy, so that
    a.png and a.jpg stay apart."""
    return relative.with_name(relative.name.replace(".", "_") + ".npy")


def csv_text(rows: list[dict]) -> str:
    """predictions.csv with ``rows`` (of ``table_row``) under its header."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def predict_each(detector: Detector, images: ImageSource | Sequence[ImageSource], run: RunOptions
                 ) -> Prediction | list[Prediction]:
    """``detector``'s results for one image (one ``Prediction``) or a list of them (a list, in order);
    an image that cannot be read stops with its ``UserError``."""
    many = isinstance(images, (list, tuple))
    sources: list[ImageSource] = list(images) if isinstance(images, (list, tuple)) else [images]  # type: ignore[list-item]
    found: dict[int, Prediction] = {}
    for i, result in detector.iter_predictions(sources, run):
        if isinstance(result, str):  # not reached without skip_errors; kept for the type
            raise UserError(result)
        found[i] = result
    ordered = [found[i] for i in range(len(sources))]
    return ordered if many else ordered[0]


class Detector(Protocol):
    """What prediction, calibration and the inspection page need of a detector: the PyTorch model
    (``DHRCLIP``) and an exported file (``deploy.OnnxDetector``) both provide it."""

    @property
    def config(self) -> ModelConfig:
        """The model settings its results hold for."""

    @property
    def checkpoint(self) -> Path | str | None:
        """The checkpoint its prompts come from, if any."""

    @property
    def reference_sources(self) -> list[str]:
        """The images of its few-shot bank, if any."""

    @property
    def can_leave_out(self) -> bool:
        """Whether an image of its bank can be scored without its own tokens (calibration on the
        bank's images)."""

    @property
    def stored_thresholds(self) -> Thresholds:
        """Thresholds that come with the detector (an exported file's), else none."""

    def signature(self, run: RunOptions) -> Signature:
        """What results of this detector with ``run``'s grid hold for."""

    def iter_predictions(self, sources: Sequence[ImageSource], run: RunOptions, skip_errors: bool = False,
                         exclude: list[int] | None = None, desc: str = "predicting", progress: bool = True
                         ) -> Iterator[tuple[int, Prediction | str]]:
        """(position, Prediction or why the image could not be read) for every source."""
