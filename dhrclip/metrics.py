"""Exact pixel- and image-level metrics from one pass over a class's pixels (docs/method.md §10).

Every distinct score is a threshold. The pixels of a class are collapsed once
into "steps", one per distinct score in descending order, each holding the
number of anomalous and normal pixels at that score and their PRO weight;
AUROC, AP, F1-max and AUPRO are all read off the cumulative sums of those
steps. float16 maps (what test.py stores) are collapsed with a 65,536-bin
histogram of their bit patterns, with no sort at all; other dtypes with one
argsort. Results are exact for the values given, and ties form one step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.measure import label as label_regions
from sklearn.metrics import auc as sklearn_auc

@dataclass
class Steps:
    """Per distinct score, highest first: anomalous count, normal count, PRO weight."""

    positives: np.ndarray
    negatives: np.ndarray
    pro_weight: np.ndarray | None = None


def _check_finite(maps: np.ndarray) -> None:
    bad = ~np.isfinite(maps.reshape(len(maps), -1)).all(axis=1) if maps.ndim > 1 else ~np.isfinite(maps)
    if bad.any():
        raise ValueError(f"score map {int(np.flatnonzero(bad)[0])} contains NaN or Inf")


def _region_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """For every anomalous pixel (in C order), 1 / (number of regions · size of its region).

    Regions are the 8-connected components of each image's mask, as in the
    MVTec AD evaluation. Summing these weights over the pixels above a
    threshold gives the mean per-region overlap (PRO) at that threshold.
    """
    per_image, total_regions = [], 0
    for mask in masks:
        if not mask.any():
            continue
        labels, count = label_regions(mask, connectivity=2, return_num=True)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        per_image.append(1.0 / sizes[labels[mask]])
        total_regions += count
    if not total_regions:
        return np.zeros(0), 0
    return np.concatenate(per_image) / total_regions, total_regions


def _float16_keys(values: np.ndarray) -> np.ndarray:
    """Map float16 bit patterns to uint16 keys whose order is the numeric order."""
    bits = values.view(np.uint16)
    return np.where(bits & 0x8000, ~bits, bits | 0x8000).astype(np.uint16)


def _steps_float16(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray | None) -> Steps:
    keys = _float16_keys(scores)
    total = np.bincount(keys.ravel(), minlength=65536)
    pos_keys = keys[positive]
    pos = np.bincount(pos_keys, minlength=65536)
    w = np.bincount(pos_keys, weights=weights, minlength=65536) if weights is not None else None
    # -0.0 and +0.0 are one score: fold the key of -0.0 (0x7FFF) into that of +0.0 (0x8000).
    for arr in (total, pos, w):
        if arr is not None:
            arr[0x8000] += arr[0x7FFF]
            arr[0x7FFF] = 0
    used = np.flatnonzero(total)[::-1]
    return Steps(pos[used], total[used] - pos[used], w[used] if w is not None else None)


def _steps_sorted(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray | None) -> Steps:
    flat = scores.ravel()
    order = np.argsort(flat)[::-1]
    ordered = flat[order]
    starts = np.concatenate([[0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1])
    is_pos = positive.ravel()[order]
    pos = np.add.reduceat(is_pos.astype(np.int64), starts)
    count = np.diff(np.append(starts, flat.size))
    w = None
    if weights is not None:
        pixel_w = np.zeros(flat.size)
        pixel_w[np.flatnonzero(positive.ravel())] = weights
        w = np.add.reduceat(pixel_w[order], starts)
    return Steps(pos, count - pos, w)


def score_steps(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray | None = None) -> Steps:
    """Collapse scores into steps; ``weights`` go with the positive pixels in C order."""
    if scores.dtype == np.float16:
        return _steps_float16(scores, positive, weights)
    return _steps_sorted(scores, positive, weights)


def _auroc(tp: np.ndarray, fp: np.ndarray) -> float:
    tpr = np.concatenate([[0.0], tp / tp[-1]])
    fpr = np.concatenate([[0.0], fp / fp[-1]])
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def _ap(tp: np.ndarray, fp: np.ndarray) -> float:
    """Σ (R_k - R_{k-1}) P_k over thresholds, as scikit-learn defines average precision."""
    recall = tp / tp[-1]
    precision = tp / (tp + fp)
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def _f1max(tp: np.ndarray, fp: np.ndarray) -> float:
    return float(np.max(2 * tp / (tp + fp + tp[-1])))


def area_to_limit(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under y(x) for x in [0, limit], x non-decreasing and starting at 0;
    the curve is interpolated linearly at ``limit``."""
    end = int(np.searchsorted(x, limit, side="right"))
    xs, ys = x[:end], y[:end]
    if end < len(x) and xs[-1] < limit:
        x0, x1, y0, y1 = x[end - 1], x[end], y[end - 1], y[end]
        xs = np.append(xs, limit)
        ys = np.append(ys, y0 + (y1 - y0) * (limit - x0) / (x1 - x0))
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2))


def _aupro(steps: Steps, fp: np.ndarray, limit: float) -> float:
    fpr = np.concatenate([[0.0], fp / fp[-1]])
    pro = np.concatenate([[0.0], np.cumsum(steps.pro_weight)])
    return area_to_limit(fpr, pro, limit) / limit


def _as_arrays(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    masks = np.asarray(masks).astype(bool, copy=False)
    maps = np.asarray(maps)
    if maps.dtype.kind != "f":
        maps = maps.astype(np.float32)
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} differ in shape")
    _check_finite(maps)
    return masks, maps


def pixel_metrics(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> dict[str, float | None]:
    """Pixel AUROC, AUPRO (to ``fpr_limit``), F1-max and AP of one class.

    masks: bool/uint8 (N, H, W); maps: float (N, H, W), kept in their own dtype.
    A metric that needs anomalous pixels (all) or normal pixels (AUROC, AUPRO)
    is None when the class has none.
    """
    masks, maps = _as_arrays(masks, maps)
    weights, regions = _region_weights(masks)
    steps = score_steps(maps, masks, weights if regions else None)
    tp, fp = np.cumsum(steps.positives), np.cumsum(steps.negatives)
    has_pos, has_neg = tp[-1] > 0, fp[-1] > 0
    return {
        "auroc": _auroc(tp, fp) if has_pos and has_neg else None,
        "aupro": _aupro(steps, fp, fpr_limit) if regions and has_neg else None,
        "f1max": _f1max(tp, fp) if has_pos else None,
        "ap": _ap(tp, fp) if has_pos else None,
    }


def image_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    """Image AUROC, AP and F1-max; None where the class lacks anomalous (or, for AUROC, normal) images."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    _check_finite(scores)
    steps = score_steps(scores, labels)
    tp, fp = np.cumsum(steps.positives), np.cumsum(steps.negatives)
    has_pos, has_neg = tp[-1] > 0, fp[-1] > 0
    return {
        "auroc": _auroc(tp, fp) if has_pos and has_neg else None,
        "ap": _ap(tp, fp) if has_pos else None,
        "f1max": _f1max(tp, fp) if has_pos else None,
    }


def legacy_aupro(masks: np.ndarray, maps: np.ndarray, max_step: int = 200, expect_fpr: float = 0.3) -> float | None:
    """The reference implementation's AUPRO, for comparison with published tables only.

    200 evenly spaced thresholds between the map's min and max, FPR axis cut
    below ``expect_fpr`` and then min-max rescaled: biased low and not
    invariant to monotone transforms of the scores (docs/method.md §9). Regions are
    labelled once here instead of at every threshold; the value is the same.
    """
    masks, maps = _as_arrays(masks, maps)
    maps = maps.astype(np.float32, copy=False)
    labels = np.zeros(masks.shape, dtype=np.int64)
    offset = 0
    for i, mask in enumerate(masks):
        lab, count = label_regions(mask, connectivity=2, return_num=True)
        labels[i] = np.where(lab > 0, lab + offset, 0)
        offset += count
    normal = ~masks
    if not offset or not normal.any():
        return None
    sizes = np.bincount(labels.ravel(), minlength=offset + 1)[1:]
    low, high = maps.min(), maps.max()
    delta = (high - low) / max_step
    if delta == 0:
        return None
    pros, fprs = [], []
    for th in np.arange(low, high, delta):
        above = maps > th
        hits = np.bincount(labels[above], minlength=offset + 1)[1:]
        pros.append(np.mean(hits / sizes))
        fprs.append(np.logical_and(normal, above).sum() / normal.sum())
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < expect_fpr
    fprs, pros = fprs[keep], pros[keep]
    if len(fprs) < 2 or fprs.max() == fprs.min():
        return None
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return float(sklearn_auc(fprs, pros))
