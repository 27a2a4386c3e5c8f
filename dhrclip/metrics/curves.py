"""The curves every metric is read off: distinct scores as steps in descending order, with their
anomalous and normal counts, and AUROC, AP, F1-max and the area to an FPR limit from their
cumulative sums."""
from __future__ import annotations

import numpy as np
import torch


def check_finite(maps: np.ndarray | torch.Tensor) -> None:
    bad: np.ndarray
    if isinstance(maps, torch.Tensor):
        flags = ~torch.isfinite(maps.reshape(len(maps), -1)).all(dim=1) if maps.ndim > 1 else ~torch.isfinite(maps)
        bad = flags.cpu().numpy()
    else:
        bad = ~np.isfinite(maps.reshape(len(maps), -1)).all(axis=1) if maps.ndim > 1 else ~np.isfinite(maps)
    if bad.any():
        raise ValueError(f"score map {int(np.flatnonzero(bad)[0])} contains NaN or Inf")


def as_arrays(masks: np.ndarray, maps: np.ndarray, check: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Bool masks and float maps of one shape; ``check``: refuse NaN and Inf here (the float16
    histograms find them in the histogram instead)."""
    masks = np.asarray(masks).astype(bool, copy=False)
    maps = np.asarray(maps)
    if maps.dtype.kind != "f":
        maps = maps.astype(np.float32)
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} differ in shape")
    if check:
        check_finite(maps)
    return masks, maps


def steps_sorted(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One argsort: (order, start of each distinct score's run, anomalous and normal counts per run)."""
    flat = scores.ravel()
    order = np.argsort(flat, kind="stable")[::-1]
    ordered = flat[order]
    starts = np.concatenate([[0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1])
    pos = np.add.reduceat(positive.ravel()[order].astype(np.int64), starts)
    count = np.diff(np.append(starts, flat.size))
    return order, starts, pos, count - pos


def auroc(tp: np.ndarray, fp: np.ndarray) -> float:
    tpr = np.concatenate([[0.0], tp / tp[-1]])
    fpr = np.concatenate([[0.0], fp / fp[-1]])
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def ap(tp: np.ndarray, fp: np.ndarray) -> float:
    """Σ (R_k - R_{k-1}) P_k over thresholds, as scikit-learn defines average precision."""
    recall = tp / tp[-1]
    precision = tp / (tp + fp)
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def f1max(tp: np.ndarray, fp: np.ndarray) -> float:
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


def pixel_curves(positives: np.ndarray, negatives: np.ndarray, pro_curve: np.ndarray | None,
                  fpr_limit: float) -> dict[str, float | None]:
    """The four pixel metrics from per-step counts (highest score first) and the PRO reached
    at each step (None without defect regions)."""
    tp, fp = np.cumsum(positives), np.cumsum(negatives)
    has_pos, has_neg = tp[-1] > 0, fp[-1] > 0
    aupro = None
    if pro_curve is not None and has_neg:
        fpr = np.concatenate([[0.0], fp / fp[-1]])
        aupro = area_to_limit(fpr, np.concatenate([[0.0], pro_curve]), fpr_limit) / fpr_limit
    return {
        "auroc": auroc(tp, fp) if has_pos and has_neg else None,
        "aupro": aupro,
        "f1max": f1max(tp, fp) if has_pos else None,
        "ap": ap(tp, fp) if has_pos else None,
    }
