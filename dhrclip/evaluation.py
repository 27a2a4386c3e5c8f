"""Zero-shot testing (docs/method.md §5, §6, §10): batched inference, per-class metrics,
tables and results.json."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from tabulate import tabulate

from .config import EvalConfig
from .data import CanvasDataset, Item, read_meta
from .detector import DHRCLIP
from .errors import UserError
from .files import save_json
from .inference import iter_batches
from .metrics import image_metrics, legacy_aupro, pixel_metrics
from .runtime import seed_everything
from .visualize import save_test_figures

log = logging.getLogger(__name__)

METRIC_NAMES = ("pixel_auroc", "pixel_aupro", "pixel_f1max", "pixel_ap", "image_auroc", "image_ap", "image_f1max")


@dataclass
class Predictions:
    """Everything inference produced for a list of items, in item order."""

    maps: np.ndarray     # (N, T, T) float16, smoothed and (optionally) normalised
    masks: np.ndarray | None  # (N, T, T) bool
    scores: np.ndarray   # (N,) float32 image scores
    labels: np.ndarray   # (N,) int
    sizes: np.ndarray    # (N, 2) original (height, width)

    def put(self, at: np.ndarray, maps: np.ndarray, scores: np.ndarray, masks: np.ndarray | None,
            sizes: np.ndarray) -> None:
        """Store results for the items at positions ``at``."""
        self.maps[at], self.scores[at], self.sizes[at] = maps, scores, sizes
        if self.masks is not None:
            self.masks[at] = masks


def _empty_predictions(items: list[Item], size: int, with_masks: bool) -> Predictions:
    n = len(items)
    return Predictions(maps=np.empty((n, size, size), np.float16),
                       masks=np.empty((n, size, size), bool) if with_masks else None,
                       scores=np.empty(n, np.float32), labels=np.array([i.anomaly for i in items]),
                       sizes=np.empty((n, 2), np.int64))


def class_metrics(pred: Predictions, pixel: bool, image: bool, aupro_mode: str) -> dict[str, float | None]:
    """All seven metrics of one class; None for those not asked for or undefined."""
    result: dict[str, float | None] = dict.fromkeys(METRIC_NAMES)
    if pixel and pred.masks is not None:
        px = pixel_metrics(pred.masks, pred.maps)
        if aupro_mode == "legacy":
            px["aupro"] = legacy_aupro(pred.masks, pred.maps)
        result.update({f"pixel_{k}": v for k, v in px.items()})
    if image:
        result.update({f"image_{k}": v for k, v in image_metrics(pred.labels, pred.scores).items()})
    return result


def mean_metrics(per_class: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    """Mean over the classes where each metric is defined."""
    mean: dict[str, float | None] = {}
    for name in METRIC_NAMES:
        values = [m[name] for m in per_class.values() if m[name] is not None]
        mean[name] = float(np.mean(values)) if values else None
    return mean


def format_table(per_class: dict[str, dict], mean: dict, names: list[str]) -> str:
    """Per-class table with a mean row, percentages to one decimal, n/a where undefined."""
    def cell(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}"
    rows = [[cls, *(cell(per_class[cls][n]) for n in names)] for cls in per_class]
    rows.append(["mean", *(cell(mean[n]) for n in names)])
    return tabulate(rows, headers=["objects", *names], tablefmt="pipe")


def metrics_by_class(model: DHRCLIP, by_class: dict[str, list[Item]], config: EvalConfig, pixel_classes: set[str],
                     image: bool) -> tuple[dict[str, dict[str, float | None]], float]:
    """Metrics of every class, streamed: one pass of batched inference over all items, and
    each class's metrics (and figures, with ``vis``) computed as soon as its last image is in, so
    memory holds the maps of about one class at a time. Pixel metrics for ``pixel_classes``.
    Returns the metrics and the seconds spent on them."""
    pixel = bool(pixel_classes)
    names = list(by_class)
    starts = np.cumsum([0] + [len(by_class[c]) for c in names])
    items = [item for c in names for item in by_class[c]]
    size = model.config.target_image_size
    open_classes: dict[int, Predictions] = {}
    filled: dict[int, int] = {}
    per_class: dict[str, dict[str, float | None]] = {}
    metrics_s = 0.0
    dataset = CanvasDataset(items, size, pixel, config.bit_depth)
    for batch in iter_batches(model.model, dataset, config.batch_size, config.num_workers, config.map_norm,
                              desc="testing"):
        maps = batch.maps.half().cpu().numpy()
        owner = np.searchsorted(starts, batch.index, side="right") - 1
        for c in np.unique(owner):
            rows = owner == c
            name = names[c]
            if c not in open_classes:
                open_classes[c], filled[c] = _empty_predictions(by_class[name], size, pixel), 0
            pred = open_classes[c]
            pred.put(batch.index[rows] - starts[c], maps[rows], batch.scores[rows],
                     batch.masks[rows] if pixel else None, batch.sizes[rows])
            filled[c] += int(rows.sum())
            if filled[c] == len(by_class[name]):
                began = time.perf_counter()
                per_class[name] = class_metrics(pred, name in pixel_classes, image, config.aupro)
                if config.vis:
                    save_test_figures(config.save_path / "vis" / name, by_class[name], pred.maps,
                                      pred.masks if name in pixel_classes else None, pred.scores, pred.sizes,
                                      config.bit_depth)
                metrics_s += time.perf_counter() - began
                del open_classes[c]
    return {name: per_class[name] for name in names}, metrics_s


def _classes_with_masks(by_class: dict[str, list[Item]]) -> set[str]:
    """The classes whose anomalous images all have masks; the others are named in a warning."""
    complete = set()
    for cls, items in by_class.items():
        missing = [item.image for item in items if item.anomaly and item.mask is None]
        if missing:
            log.warning("class %s: %d anomalous image(s) have no mask (first: %s); image-level metrics only for "
                        "this class", cls, len(missing), missing[0])
        else:
            complete.add(cls)
    return complete


def evaluate(model: DHRCLIP, config: EvalConfig) -> dict:
    """Zero-shot test of ``model`` on the test split of ``config.data_path``.

    Prints the per-class table, appends it to ``save_path/log.txt`` and writes
    ``save_path/results.json``, which it also returns: {"dataset",
    "checkpoint", "config", "test_config", "classes": {cls: {metric: value}},
    "mean", "timing"}; metrics are fractions, None where undefined.
    """
    seed_everything(config.seed)
    by_class = read_meta(config.data_path, "test", config.classes)
    dataset = config.dataset or config.data_path.resolve().name
    want_pixel = config.metrics in ("pixel-level", "image-pixel-level")
    want_image = config.metrics in ("image-level", "image-pixel-level")
    items = [item for cls in by_class for item in by_class[cls]]
    pixel_classes = _classes_with_masks(by_class) if want_pixel else set()
    if want_pixel and not want_image and not pixel_classes:
        raise UserError(f"metrics pixel-level: no class of {config.data_path} has a mask for every anomalous "
                        f"image, so there is nothing to report; use metrics image-level", field="metrics")
    want_pixel = bool(pixel_classes)

    checkpoint = str(model.checkpoint) if model.checkpoint is not None else None
    log.info("testing %s on %s (%d images, %d classes) on %s in %s", checkpoint or "untrained prompts",
             config.data_path, len(items), len(by_class), model.device, str(model.precision).removeprefix("torch."))
    started = time.perf_counter()
    per_class, metrics_s = metrics_by_class(model, by_class, config, pixel_classes, want_image)
    inference_s = time.perf_counter() - started - metrics_s
    mean = mean_metrics(per_class)

    names = [n for n in METRIC_NAMES
             if (want_pixel and n.startswith("pixel")) or (want_image and n.startswith("image"))]
    table = format_table(per_class, mean, names)
    print(table)
    config.save_path.mkdir(parents=True, exist_ok=True)
    with open(config.save_path / "log.txt", "a") as handle:
        handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {dataset} {checkpoint}\n{table}\n")
    results = {
        "dataset": dataset,
        "checkpoint": checkpoint,
        "config": model.config.to_dict(),
        "test_config": config.to_dict(),
        "classes": per_class,
        "pixel_metric_classes": sorted(pixel_classes),  # the classes behind the pixel means
        "mean": mean,
        "timing": {"images": len(items), "inference_s": inference_s, "metrics_s": metrics_s},
    }
    save_json(config.save_path / "results.json", results)
    log.info("%d images: inference %.1f s (%.1f images/s), metrics %.1f s; results in %s", len(items), inference_s,
             len(items) / inference_s, metrics_s, config.save_path / "results.json")
    return results
