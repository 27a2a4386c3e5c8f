"""Run an exported detector (``export.py``) with numpy, Pillow and onnxruntime alone: no PyTorch.

    detector = OnnxDetector("model.onnx")
    result = detector.predict("part.png")   # .anomaly_map at the image's size, .score, .decision

Images of any size and mode are read as everywhere in the project (``data/images.py``) and placed
by the file's grid as the PyTorch path places them (``core/grid.py``): resized bicubically into
their box on their canvas (the fixed grid: the whole T×T canvas; the auto grid: a canvas of whole
tiles at the image's aspect ratio), batched by canvas shape, run, and each map cut to its box and
resized back to the image's size (bilinear, as ``cv2.INTER_LINEAR`` does). Decisions use the
thresholds stored in the file, unless others are given.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..config import DEFAULT_MAX_TILES, RunOptions
from ..core.budget import cpu_views
from ..core.grid import Grid, Placement, global_view_size, grid_for
from ..data.images import ImageSource, canvas_array, image_from_source, resize_bilinear
from ..detector.results import Prediction, Thresholds, decide, predict_each
from ..detector.signature import Signature
from ..errors import UserError
from .metadata import read_metadata
from .sessions import open_session

BATCHED = ("canvas", "box")  # the graph's inputs with one row per canvas


class OnnxDetector:
    """An exported detector: its graph in onnxruntime and its settings from the file's metadata
    (``metadata``). It is a ``detector.results.Detector``: predict.py and calibration run it as
    they run the PyTorch model."""

    def __init__(self, path: str | Path, providers: list[str] | None = None, runtime: str = "onnxruntime",
                 threads: int = 0) -> None:
        """``runtime``: onnxruntime (on ``providers``, default the CPU) or openvino (the CPU);
        ``threads``: 0 lets the runtime choose (one per core)."""
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"onnx {path}: no such file", field="onnx")
        self.session = open_session(self.path, runtime, providers, threads)
        self.metadata = read_metadata(self.session.metadata, self.path)
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

    @property
    def grid(self) -> Grid:
        """The grid the file was exported for."""
        own = self.own_run()
        return grid_for(own.grid, own.max_tiles, self.config)

    def own_run(self, batch_size: int = RunOptions.batch_size) -> RunOptions:
        """Run options on the grid the file was exported for."""
        record = self.metadata.signature.grid
        return RunOptions(grid=record["mode"], max_tiles=record.get("max_tiles", DEFAULT_MAX_TILES),
                          batch_size=batch_size)

    def run(self, canvases: np.ndarray, placements: Sequence[Placement] | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (B, 3, H, W) canvases of one shape, placed as ``placements`` (needed by a file of
        the auto grid) -> (B, H, W) maps, zero outside each image's box, and (B,) scores. On the CPU
        the batch goes through in calls of ``calls_of`` canvases, as the PyTorch forward chunks it:
        float files give what each canvas gives alone; an int8 file quantises its activations with
        one scale per call."""
        feed = {"canvas": np.ascontiguousarray(canvases, dtype=np.uint8)}
        if "box" in self.session.inputs:  # a graph of the auto grid
            if placements is None:
                raise ValueError("a file of the auto grid needs each canvas's placement")
            height, width = canvases.shape[-2:]
            patch = self.metadata.patch or 1
            rows, cols = global_view_size(height, width, self.config.image_size, patch)
            feed["box"] = np.array([(p.top, p.left, p.height, p.width) for p in placements], dtype=np.int64)
            feed["global_grid"] = np.zeros((rows // patch, cols // patch), dtype=np.float32)
        step = len(canvases)
        if step > 1:
            step = self.calls_of(placements[0] if placements else self.grid.place(*canvases.shape[-2:]))
        if len(canvases) <= step:
            return self.session.run(feed)
        parts = [self.session.run({name: value[start:start + step] if name in BATCHED else value
                                   for name, value in feed.items()}) for start in range(0, len(canvases), step)]
        return np.concatenate([maps for maps, _ in parts]), np.concatenate([scores for _, scores in parts])

    def calls_of(self, placed: Placement) -> int:
        """How many canvases of ``placed``'s tiles one call takes: on the CPU, as many as keep the
        tiles within what one PyTorch forward takes (``core.budget``: batches of 8 canvases of 2×2
        tiles ran 4.5% faster in calls of 2 on the tiny CLIP, and 10% faster in calls of 1 on
        ViT-B-16); elsewhere, and for files that do not record their width, the whole batch."""
        patch, width = self.metadata.patch, self.metadata.width
        if not self.session.splits_batches or patch is None or width is None:
            return sys.maxsize
        return max(1, cpu_views((placed.tiles.tile // patch) ** 2, width) // (placed.rows * placed.cols))

    def iter_predictions(self, sources: Sequence[ImageSource], run: RunOptions | None = None,
                         skip_errors: bool = False, exclude: list[int] | None = None, desc: str = "predicting",
                         progress: bool = True) -> Iterator[tuple[int, Prediction | str]]:
        """(position, Prediction or why the image could not be read) for every source, batched by
        canvas shape in batches of ``run.batch_size`` (so not in input order on the auto grid);
        the contract of ``DHRCLIP.iter_predictions``, on the file's grid."""
        grid = self.grid
        run = run or self.own_run()
        if not grid_for(run.grid, run.max_tiles, self.config).matches(self.metadata.signature.grid):
            raise UserError(f"this file was exported for {grid.describe()}; export again with the grid you ask "
                            f"for, or run it with its own", field="grid")
        if exclude is not None and any(k >= 0 for k in exclude):
            raise UserError("an exported bank cannot leave an image out; calibrate with the PyTorch model",
                            field="calibrate_on")
        groups: dict[tuple[int, ...], list[tuple[int, np.ndarray, Placement, tuple[int, int]]]] = {}
        for i, source in enumerate(sources):
            try:
                image = image_from_source(source, run.bit_depth, run.max_pixels)
            except UserError as exc:
                if not skip_errors:
                    raise
                yield i, str(exc)
                continue
            placed = grid.place(image.height, image.width)
            canvas = np.zeros((3, *placed.tiles.size), dtype=np.uint8)
            canvas[:, placed.box[0], placed.box[1]] = canvas_array(image, (placed.height, placed.width))
            key = tuple(placed.to_tuple()[:5])  # the canvas and its tiles
            groups.setdefault(key, []).append((i, canvas, placed, (image.height, image.width)))
            if len(groups[key]) == run.batch_size:
                yield from self._results(groups.pop(key), sources)
        for group in groups.values():
            yield from self._results(group, sources)

    def _results(self, group: list[tuple[int, np.ndarray, Placement, tuple[int, int]]],
                 sources: Sequence[ImageSource]) -> Iterator[tuple[int, Prediction]]:
        maps, scores = self.run(np.stack([canvas for _, canvas, _, _ in group]), [p for _, _, p, _ in group])
        for k, (i, _, placed, size) in enumerate(group):
            amap = maps[k][placed.box]
            if not (np.isfinite(amap).all() and np.isfinite(scores[k])):
                name = sources[i] if isinstance(sources[i], (str, Path)) else f"image {i}"
                raise UserError(f"the anomaly map of {name} contains NaN or Inf; an fp16 export may "
                                f"overflow where fp32 does not", field="onnx")
            yield i, Prediction(resize_bilinear(amap, *size), float(scores[k]), (placed.rows, placed.cols))

    def predict(self, images: ImageSource | Sequence[ImageSource], batch_size: int = 8
                ) -> Prediction | list[Prediction]:
        """Maps (at each image's own size) and scores: one image gives one result, a list a list."""
        return predict_each(self, images, self.own_run(batch_size))

    def decide(self, result: Prediction) -> str:
        """'anomalous', 'normal', or '' without thresholds, by the file's thresholds."""
        return decide(result.score, result.map_max, self.image_threshold, self.pixel_threshold)
