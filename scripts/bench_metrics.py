"""Benchmark the metrics on MVTec-scale synthetic data against the reference's metric step.

Builds 15 classes, 1,725 maps of 448² (float16, as test.py scores them) with
blob-shaped defect masks, computes every pixel and image metric, and times
the reference implementation's loop on a subset, scaled per image. With
``--stream`` the maps are made and fed to the accumulators a batch at a time,
as test.py does, so memory does not grow with ``--scale`` (× the number of
images). Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import cv2
import numpy as np
import torch
from skimage import measure
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from dhrclip.metrics import ImageAccumulator, PixelAccumulator, image_metrics, pixel_metrics, region_sizes

# MVTec AD test split: (normal, anomalous) images per class, 1,725 in all.
MVTEC_TEST = [(20, 63), (58, 92), (23, 109), (28, 89), (21, 57), (40, 70), (32, 92), (22, 93), (26, 141),
              (41, 119), (33, 84), (12, 30), (60, 40), (19, 60), (32, 119)]


def reference_metric_step(masks: np.ndarray, maps: np.ndarray, max_step: int = 200, expect_fpr: float = 0.3):
    """The reference's per-class pixel metrics as it computes them: scikit-learn on every pixel,
    then AUPRO re-labelling every mask at each of 200 thresholds with a min-max rescaled FPR axis."""
    y, s = masks.ravel(), maps.ravel()
    pixel_auroc = roc_auc_score(y, s)
    pixel_ap = average_precision_score(y, s)
    p, r, _ = precision_recall_curve(y, s)
    f1 = (2 * p * r) / (p + r)
    f1max = np.max(f1[np.isfinite(f1)])
    binary = np.zeros_like(maps, dtype=bool)
    lo, hi = maps.min(), maps.max()
    delta = (hi - lo) / max_step
    pros, fprs = [], []
    for th in np.arange(lo, hi, delta):
        binary[maps <= th], binary[maps > th] = 0, 1
        pro = []
        for b, m in zip(binary, masks):
            for region in measure.regionprops(measure.label(m)):
                pro.append(b[region.coords[:, 0], region.coords[:, 1]].sum() / region.area)
        inverse = 1 - masks
        fprs.append(np.logical_and(inverse, binary).sum() / inverse.sum())
        pros.append(np.array(pro).mean())
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < expect_fpr
    fprs = fprs[keep]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return pixel_auroc, pixel_ap, f1max, auc(fprs, pros[keep])


def synthetic_class(normal: int, anomalous: int, size: int, rng: np.random.Generator):
    """Smooth random maps, raised inside blob-shaped defects covering a few percent of each anomalous image."""
    n = normal + anomalous
    maps = np.empty((n, size, size), np.float16)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        field = cv2.resize(rng.random((14, 14), dtype=np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
        if i >= normal:
            mask = np.zeros((size, size), np.uint8)
            for _ in range(int(rng.integers(1, 4))):
                c = tuple(int(v) for v in rng.integers(size // 8, 7 * size // 8, 2))
                axes = tuple(int(v) for v in rng.integers(size // 40, size // 10, 2))
                cv2.ellipse(mask, c, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
            masks[i] = mask.astype(bool)
            field = field + 0.6 * cv2.GaussianBlur(mask.astype(np.float32), (0, 0), size / 60)
        field -= field.min()
        maps[i] = field / field.max()
    labels = np.r_[np.zeros(normal, int), np.ones(anomalous, int)]
    scores = maps.reshape(n, -1).max(axis=1).astype(np.float32) + rng.normal(0, 0.05, n).astype(np.float32)
    return masks, maps, labels, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--legacy_images", type=int, default=12, help="images of one class timed in the legacy loop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                        help="precision the maps are kept in (test.py keeps float16)")
    parser.add_argument("--stream", action="store_true",
                        help="feed accumulators batch by batch, keeping no maps (what test.py does)")
    parser.add_argument("--scale", type=int, default=1, help="multiply every class's image counts")
    parser.add_argument("--batch", type=int, default=16, help="maps per accumulator update with --stream")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    if args.stream:
        stream(args, rng)
        return
    classes = [synthetic_class(n * args.scale, a * args.scale, args.size, rng) for n, a in MVTEC_TEST]
    images = sum(len(c[1]) for c in classes)

    started = time.perf_counter()
    for masks, maps, labels, scores in classes:
        pixel_metrics(masks, maps.astype(args.dtype, copy=False))
        image_metrics(labels, scores)
    seconds = time.perf_counter() - started

    masks, maps = classes[0][0], classes[0][1]
    pick = np.r_[0:args.legacy_images // 2, len(maps) - (args.legacy_images - args.legacy_images // 2):len(maps)]
    legacy_start = time.perf_counter()
    reference_metric_step(masks[pick].astype(np.uint8), maps[pick].astype(np.float32))
    legacy_per_image = (time.perf_counter() - legacy_start) / len(pick)

    print(json.dumps({
        "pixels": int(images * args.size * args.size),
        "seconds_all_metrics": round(seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "legacy_seconds_per_image": round(legacy_per_image, 4),
        "speedup_vs_legacy": round(legacy_per_image / (seconds / images), 1),
    }))


def stream(args: argparse.Namespace, rng: np.random.Generator) -> None:
    """Every class made and scored ``args.batch`` maps at a time; only the accumulators persist."""
    making, scoring, images = 0.0, 0.0, 0
    for normal, anomalous in MVTEC_TEST:
        pixel, image = PixelAccumulator(), ImageAccumulator()
        todo = [0] * (normal * args.scale) + [1] * (anomalous * args.scale)
        for start in range(0, len(todo), args.batch):
            chunk = todo[start:start + args.batch]
            began = time.perf_counter()
            masks, maps, labels, scores = synthetic_class(chunk.count(0), chunk.count(1), args.size, rng)
            making += time.perf_counter() - began
            began = time.perf_counter()
            found = [region_sizes(m) for m in masks]  # test.py's data loader does this beside the mask
            pixel.update(torch.from_numpy(maps), torch.from_numpy(masks),
                         torch.from_numpy(np.stack([s for s, _ in found])), sum(c for _, c in found))
            image.update(scores, labels)
            scoring += time.perf_counter() - began
            images += len(chunk)
        began = time.perf_counter()
        pixel.compute()
        image.compute()
        scoring += time.perf_counter() - began
    print(json.dumps({
        "images": images,
        "pixels": int(images * args.size * args.size),
        "seconds_all_metrics": round(scoring, 2),
        "seconds_making_maps": round(making, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


if __name__ == "__main__":
    main()
