"""Zero-shot testing (SPEC §5, §6, §10): batched inference, per-class metrics, tables and results.json."""
from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import load_prompts, read_checkpoint, save_json
from .cli import build_model, plain_config
from .data import CanvasDataset, Item, has_masks, read_meta
from .errors import UserError
from .maps import gaussian_blur, image_scores, minmax_normalize
from .metrics import image_metrics, legacy_aupro, pixel_metrics
from .model import DHRCLIP
from .runtime import autocast, resolve_device, resolve_precision, seed_everything
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

    def put(self, at: np.ndarray, maps: np.ndarray, scores: np.ndarray, masks: np.ndarray | None) -> None:
        """Store results for the items at positions ``at``."""
        self.maps[at], self.scores[at] = maps, scores
        if self.masks is not None:
            self.masks[at] = masks


def _empty_predictions(items: list[Item], size: int, with_masks: bool) -> Predictions:
    n = len(items)
    return Predictions(maps=np.empty((n, size, size), np.float16),
                       masks=np.empty((n, size, size), bool) if with_masks else None,
                       scores=np.empty(n, np.float32), labels=np.array([i.anomaly for i in items]))


def postprocess(raw: torch.Tensor, sigma: float, map_norm: str) -> torch.Tensor:
    """Gaussian smoothing then (by default) per-image min-max normalisation, on the maps' device."""
    maps = gaussian_blur(raw.float(), sigma)
    return minmax_normalize(maps) if map_norm == "per-image" else maps


@dataclass
class BatchOutput:
    """One batch of inference results; the maps stay on the device until the consumer copies them."""

    index: np.ndarray            # positions of the batch's items in the item list
    maps: torch.Tensor           # (B, T, T) float32, on the device
    scores: np.ndarray           # (B,) image scores
    sizes: np.ndarray            # (B, 2) original (height, width)
    masks: np.ndarray | None     # (B, T, T) bool


@torch.no_grad()
def iter_predictions(model: DHRCLIP, items: list[Item], args: argparse.Namespace, device: torch.device,
                     dtype: torch.dtype, with_masks: bool, map_norm: str, desc: str = "testing"
                     ) -> Iterator[BatchOutput]:
    """Run the model over ``items`` in batches: views encoded together, maps smoothed and
    normalised on the device, one host copy per batch and none per image."""
    model.eval()
    with autocast(device, dtype):
        text = model.text_features().float()
    loader = DataLoader(CanvasDataset(items, model.config.target_image_size, with_masks),
                        batch_size=args.batch_size, num_workers=args.num_workers, pin_memory=device.type == "cuda")
    for batch in tqdm(loader, desc=desc, unit="batch", disable=None):
        images = batch["image"].to(device, non_blocking=True)
        with autocast(device, dtype):
            feats = model.encode_views(images)
        maps = postprocess(model.anomaly_maps(feats, text), args.sigma, map_norm)
        scores = image_scores(model.image_logits(feats, text))
        index = batch["index"].numpy()
        finite = torch.isfinite(maps).flatten(1).all(dim=1) & torch.isfinite(scores)
        if not bool(finite.all()):
            bad = items[int(index[int((~finite).nonzero()[0])])].image
            raise UserError(f"the anomaly map of {bad} contains NaN or Inf; try --precision fp32")
        yield BatchOutput(index=index, maps=maps, scores=scores.cpu().numpy(), sizes=batch["size"].numpy(),
                          masks=batch["mask"].numpy() if with_masks else None)


def predict_items(model: DHRCLIP, items: list[Item], args: argparse.Namespace, device: torch.device,
                  dtype: torch.dtype, with_masks: bool, desc: str = "testing") -> Predictions:
    """All maps (float16), masks and scores of ``items``, in item order."""
    out = _empty_predictions(items, model.config.target_image_size, with_masks)
    for batch in iter_predictions(model, items, args, device, dtype, with_masks, args.map_norm, desc):
        out.put(batch.index, batch.maps.half().cpu().numpy(), batch.scores, batch.masks)
    return out


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


def metrics_by_class(model: DHRCLIP, by_class: dict[str, list[Item]], args: argparse.Namespace,
                     device: torch.device, dtype: torch.dtype, pixel: bool, image: bool
                     ) -> tuple[dict[str, dict[str, float | None]], float]:
    """Metrics of every class, streamed: one pass of batched inference over all items, and
    each class's metrics (and --vis figures) computed as soon as its last image is in, so
    memory holds the maps of about one class at a time. Returns the metrics and the
    seconds spent on them."""
    names = list(by_class)
    starts = np.cumsum([0] + [len(by_class[c]) for c in names])
    items = [item for c in names for item in by_class[c]]
    size = model.config.target_image_size
    open_classes: dict[int, Predictions] = {}
    filled: dict[int, int] = {}
    per_class: dict[str, dict[str, float | None]] = {}
    metrics_s = 0.0
    for batch in iter_predictions(model, items, args, device, dtype, pixel, args.map_norm):
        maps = batch.maps.half().cpu().numpy()
        owner = np.searchsorted(starts, batch.index, side="right") - 1
        for c in np.unique(owner):
            rows = owner == c
            name = names[c]
            if c not in open_classes:
                open_classes[c], filled[c] = _empty_predictions(by_class[name], size, pixel), 0
            pred = open_classes[c]
            pred.put(batch.index[rows] - starts[c], maps[rows], batch.scores[rows],
                     batch.masks[rows] if pixel else None)
            filled[c] += int(rows.sum())
            if filled[c] == len(by_class[name]):
                began = time.perf_counter()
                per_class[name] = class_metrics(pred, pixel, image, args.aupro)
                if args.vis:
                    save_test_figures(Path(args.save_path) / "vis" / name, by_class[name], pred.maps, pred.masks,
                                      pred.scores)
                metrics_s += time.perf_counter() - began
                del open_classes[c]
    return {name: per_class[name] for name in names}, metrics_s


def evaluate(args: argparse.Namespace) -> dict:
    """test.py: zero-shot evaluation of a prompt checkpoint on ``args.data_path``."""
    seed_everything(args.seed)
    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    data_path = Path(args.data_path or f"./data/{args.dataset}")
    by_class = read_meta(data_path, "test", args.classes)
    checkpoint = read_checkpoint(Path(args.checkpoint_path))
    want_pixel = args.metrics in ("pixel-level", "image-pixel-level")
    want_image = args.metrics in ("image-level", "image-pixel-level")
    items = [item for cls in by_class for item in by_class[cls]]
    if want_pixel and not has_masks(items):
        log.warning("%s has anomalous images without masks: reporting image-level metrics only", data_path)
        want_pixel = False

    model = build_model(args, device)
    load_prompts(model.prompt_learner, checkpoint)
    log.info("testing %s on %s (%d images, %d classes) on %s in %s", checkpoint["path"], data_path, len(items),
             len(by_class), device, str(dtype).removeprefix("torch."))
    started = time.perf_counter()
    per_class, metrics_s = metrics_by_class(model, by_class, args, device, dtype, want_pixel, want_image)
    inference_s = time.perf_counter() - started - metrics_s
    mean = mean_metrics(per_class)

    names = [n for n in METRIC_NAMES if (want_pixel and n.startswith("pixel")) or (want_image and n.startswith("image"))]
    table = format_table(per_class, mean, names)
    print(table)
    save_path = Path(args.save_path)
    save_path.mkdir(parents=True, exist_ok=True)
    with open(save_path / "log.txt", "a") as handle:
        handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {args.dataset} {checkpoint['path']}\n{table}\n")
    results = {
        "dataset": args.dataset,
        "checkpoint": checkpoint["path"],
        "config": plain_config(args),
        "classes": per_class,
        "mean": mean,
        "timing": {"images": len(items), "inference_s": inference_s, "metrics_s": metrics_s},
    }
    save_json(save_path / "results.json", results)
    log.info("%d images: inference %.1f s (%.1f images/s), metrics %.1f s; results in %s", len(items), inference_s,
             len(items) / inference_s, metrics_s, save_path / "results.json")
    return results
