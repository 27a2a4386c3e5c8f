"""Exact pixel- and image-level metrics, kept as additive state (docs/method.md §10).

Every distinct score is a threshold. A class's pixels are collapsed into
"steps", one per distinct score in descending order, each holding the number
of anomalous and normal pixels at that score and their PRO weight; AUROC, AP,
F1-max and AUPRO are all read off the cumulative sums of those steps.

test.py's maps are float16, so the steps of a class are three 65,536-bin
histograms indexed by the scores' bit patterns: all pixels, anomalous pixels,
and anomalous pixels weighted by 1 / (size of their 8-connected defect
region), plus the number of regions. ``PixelAccumulator`` keeps them on the
maps' device and adds batches into them; accumulators merge by addition. The
PRO weights are fixed-point integers (units of 2^-42), so every sum is exact
and the result cannot depend on how images were split into batches or
processes. ``pixel_metrics`` on float16 maps is one accumulator update; on
other dtypes it sorts the scores once instead.
"""
from __future__ import annotations

import numpy as np
import torch
from skimage.measure import label as label_regions
from sklearn.metrics import auc as sklearn_auc

from ..errors import UserError

FLOAT16_BINS = 65536
PRO_FRACTION_BITS = 42
_PRO_ONE = 1 << PRO_FRACTION_BITS
MAX_REGIONS = 1 << 20  # keeps the fixed-point PRO sums below 2^63
_NEG_ZERO_KEY, _POS_ZERO_KEY = 0x7FFF, 0x8000


def region_sizes(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """For one (H, W) mask: each pixel's 8-connected defect region size (0 off the mask), as
    int32, and the number of regions. Regions are those of the MVTec AD evaluation."""
    labels, count = label_regions(np.asarray(mask, dtype=bool), connectivity=2, return_num=True)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    return sizes[labels].astype(np.int32), int(count)


def float16_keys(maps: torch.Tensor) -> torch.Tensor:
    """Scores rounded to float16, as int64 keys in 0..65535 whose order is the numeric order;
    -0.0 and +0.0 share one key."""
    bits = maps.to(torch.float16).view(torch.int16).to(torch.int64) & 0xFFFF
    keys = torch.where(bits >= 0x8000, 0xFFFF - bits, bits | 0x8000)
    return keys.masked_fill_(keys == _NEG_ZERO_KEY, _POS_ZERO_KEY)


def _check_finite(maps: np.ndarray | torch.Tensor) -> None:
    if isinstance(maps, torch.Tensor):
        bad = ~torch.isfinite(maps.reshape(len(maps), -1)).all(dim=1) if maps.ndim > 1 else ~torch.isfinite(maps)
        bad = bad.cpu().numpy()
    else:
        bad = ~np.isfinite(maps.reshape(len(maps), -1)).all(axis=1) if maps.ndim > 1 else ~np.isfinite(maps)
    if bad.any():
        raise ValueError(f"score map {int(np.flatnonzero(bad)[0])} contains NaN or Inf")


class PixelAccumulator:
    """Additive state of one class's pixel metrics, on the device of the maps it is fed.

    ``state`` is one int64 tensor: the histograms of all pixels, of anomalous
    pixels and of their fixed-point PRO weights by float16 score key, then the
    region count. Summing the states of two accumulators (``merge``, or an
    all-reduce across processes) gives the state of their union.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.state = torch.zeros(3 * FLOAT16_BINS + 1, dtype=torch.int64, device=device)

    @property
    def total(self) -> torch.Tensor:
        return self.state[:FLOAT16_BINS]

    @property
    def positives(self) -> torch.Tensor:
        return self.state[FLOAT16_BINS:2 * FLOAT16_BINS]

    @property
    def pro(self) -> torch.Tensor:
        return self.state[2 * FLOAT16_BINS:3 * FLOAT16_BINS]

    @property
    def regions(self) -> int:
        return int(self.state[-1])

    def update(self, maps: torch.Tensor, masks: torch.Tensor, sizes: torch.Tensor | None = None,
               regions: int | None = None) -> PixelAccumulator:
        """Add a batch: maps (B, H, W) of any float dtype (scored as float16), bool masks of the
        same shape, and the masks' ``region_sizes`` with their region count, both or neither
        (computed here from the masks when not given). Images may differ in size between calls."""
        if (sizes is None) != (regions is None):
            raise ValueError("give the region sizes together with their region count, or neither")
        maps = torch.as_tensor(maps, device=self.state.device)
        masks = torch.as_tensor(masks, device=self.state.device).to(torch.bool)
        if masks.shape != maps.shape:
            raise ValueError(f"masks {tuple(masks.shape)} and maps {tuple(maps.shape)} differ in shape")
        if not maps.numel():
            return self
        _check_finite(maps)
        if sizes is None:
            found = [region_sizes(m) for m in masks.cpu().numpy().reshape(-1, *masks.shape[-2:])]
            sizes = torch.from_numpy(np.stack([s for s, _ in found]).reshape(masks.shape)) if found else None
            regions = sum(c for _, c in found)
        keys = float16_keys(maps).flatten()
        flat_masks = masks.flatten()
        self.total.add_(torch.bincount(keys, minlength=FLOAT16_BINS))
        anomalous = keys[flat_masks]
        self.positives.add_(torch.bincount(anomalous, minlength=FLOAT16_BINS))
        if regions:
            size = torch.as_tensor(sizes, device=self.state.device).flatten()[flat_masks].to(torch.int64)
            if bool((size <= 0).any()):
                raise ValueError("region sizes must be positive on every anomalous pixel")
            self.pro.index_add_(0, anomalous, (_PRO_ONE + size // 2) // size)
            self.state[-1] += int(regions)
            self._check_regions()
        return self

    def _check_regions(self) -> None:
        if self.regions > MAX_REGIONS:
            raise UserError(f"more than {MAX_REGIONS:,} defect regions in one class: AUPRO's exact sums would "
                            f"overflow; split the class into smaller ones")

    def merge(self, other: PixelAccumulator) -> PixelAccumulator:
        self.state += other.state.to(self.state.device)
        return self

    def compute(self, fpr_limit: float = 0.3) -> dict[str, float | None]:
        """Pixel AUROC, AUPRO (to ``fpr_limit``), F1-max and AP; None where undefined."""
        self._check_regions()  # also after merging, where the counts of several shards add up
        state = self.state.cpu().numpy()
        total, pos, pro = (state[k * FLOAT16_BINS:(k + 1) * FLOAT16_BINS] for k in range(3))
        used = np.flatnonzero(total)[::-1]
        if not len(used):
            return dict.fromkeys(("auroc", "aupro", "f1max", "ap"))
        regions = self.regions
        pro_curve = np.cumsum(pro[used]) / (float(_PRO_ONE) * regions) if regions else None
        return _pixel_curves(pos[used], total[used] - pos[used], pro_curve, fpr_limit)


class ImageAccumulator:
    """Image scores and labels of one class; merging concatenates them."""

    def __init__(self) -> None:
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def update(self, scores: np.ndarray, labels: np.ndarray) -> ImageAccumulator:
        self.scores.append(np.asarray(scores, dtype=np.float64).ravel())
        self.labels.append(np.asarray(labels).astype(bool).ravel())
        return self

    def merge(self, other: ImageAccumulator) -> ImageAccumulator:
        self.scores += other.scores
        self.labels += other.labels
        return self

    def compute(self) -> dict[str, float | None]:
        if not self.scores:
            return dict.fromkeys(("auroc", "ap", "f1max"))
        return image_metrics(np.concatenate(self.labels), np.concatenate(self.scores))


def _steps_sorted(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One argsort: (order, start of each distinct score's run, anomalous and normal counts per run)."""
    flat = scores.ravel()
    order = np.argsort(flat, kind="stable")[::-1]
    ordered = flat[order]
    starts = np.concatenate([[0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1])
    pos = np.add.reduceat(positive.ravel()[order].astype(np.int64), starts)
    count = np.diff(np.append(starts, flat.size))
    return order, starts, pos, count - pos


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


def _pixel_curves(positives: np.ndarray, negatives: np.ndarray, pro_curve: np.ndarray | None,
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
        "auroc": _auroc(tp, fp) if has_pos and has_neg else None,
        "aupro": aupro,
        "f1max": _f1max(tp, fp) if has_pos else None,
        "ap": _ap(tp, fp) if has_pos else None,
    }


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
    if maps.dtype == np.float16:
        return PixelAccumulator().update(torch.from_numpy(maps), torch.from_numpy(masks)).compute(fpr_limit)
    order, starts, pos, neg = _steps_sorted(maps, masks)
    found = [region_sizes(m) for m in masks]
    regions = sum(c for _, c in found)
    pro_curve = None
    if regions:
        sizes = np.stack([s for s, _ in found]).ravel()
        weights = np.divide(1.0, sizes, out=np.zeros(sizes.shape), where=sizes > 0) / regions
        pro_curve = np.cumsum(np.add.reduceat(weights[order], starts))
    return _pixel_curves(pos, neg, pro_curve, fpr_limit)


def image_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    """Image AUROC, AP and F1-max; all None unless the class has both normal and anomalous
    images: with anomalous images alone (the medical segmentation sets) AP and F1-max would be 1
    whatever the scores, a figure that says nothing of the detector."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    _check_finite(scores)
    _, _, pos, neg = _steps_sorted(scores, labels)
    tp, fp = np.cumsum(pos), np.cumsum(neg)
    if tp[-1] == 0 or fp[-1] == 0:
        return dict.fromkeys(("auroc", "ap", "f1max"))
    return {"auroc": _auroc(tp, fp), "ap": _ap(tp, fp), "f1max": _f1max(tp, fp)}


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
