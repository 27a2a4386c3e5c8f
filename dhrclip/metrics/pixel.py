"""Pixel-level metrics (docs/method.md §10): AUROC, AUPRO, F1-max and AP, exact, as additive state.

test.py's maps are float16, so the steps of a class are three 65,536-bin
histograms indexed by the scores' 16-bit patterns: all pixels, anomalous
pixels, and anomalous pixels weighted by 1 / (size of their 8-connected
defect region), plus the number of regions. ``PixelAccumulator`` keeps them on
the maps' device and adds batches into them; accumulators merge by addition.
A batch costs one conversion to float16 and two bincounts of the raw patterns;
the patterns are put in score order once per class, by a 65,536-entry table, when
the metrics are read (and NaN, Inf, or a score beyond float16's range are found
there, in the histogram, not pixel by pixel). The PRO weights are fixed-point
integers (units of 2^-42), so every sum is exact and the result cannot depend on
how images were split into batches or processes. ``pixel_metrics`` on float16
maps is one accumulator update; on other dtypes it sorts the scores once instead.
"""
from __future__ import annotations

import numpy as np
import torch
from skimage.measure import label as label_regions

from ..errors import UserError
from .curves import as_arrays, pixel_curves, steps_sorted

FLOAT16_BINS = 65536
PRO_FRACTION_BITS = 42
_PRO_ONE = 1 << PRO_FRACTION_BITS
MAX_REGIONS = 1 << 20  # keeps the fixed-point PRO sums below 2^63
FLOAT16_MAX = 65504.0
TIE_WARNING = 0.1  # points of AUROC or AUPRO that float16's rounding may move a class's metric before a warning


def _float16_table() -> tuple[np.ndarray, np.ndarray]:
    """For each 16-bit pattern (as its int16 value + 32768): its rank in score order (-0.0 and
    +0.0 sharing one), and whether it is finite."""
    values = (np.arange(FLOAT16_BINS, dtype=np.int32) - 32768).astype(np.int16).view(np.float16)
    finite = np.isfinite(values)
    rank = np.zeros(FLOAT16_BINS, dtype=np.int64)
    order = np.argsort(np.where(finite, values, np.inf).astype(np.float64), kind="stable")
    ordered = values[order].astype(np.float64)
    rank[order] = np.concatenate([[0], np.cumsum(ordered[1:] != ordered[:-1])])  # equal values (±0) share a rank
    return rank, finite


FLOAT16_RANK, FLOAT16_FINITE = _float16_table()


def region_sizes(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """For one (H, W) mask: each pixel's 8-connected defect region size (0 off the mask), as
    int32, and the number of regions. Regions are those of the MVTec AD evaluation."""
    labels, count = label_regions(np.asarray(mask, dtype=bool), connectivity=2, return_num=True)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    return sizes[labels].astype(np.int32), int(count)


def float16_patterns(maps: torch.Tensor) -> torch.Tensor:
    """Scores rounded to float16, as their 16-bit patterns in 0..65535 (int64): the histogram
    index; ``FLOAT16_RANK`` puts them in score order."""
    return maps.to(torch.float16).view(torch.int16).to(torch.int64) + 32768


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
        if sizes is None:
            found = [region_sizes(m) for m in masks.cpu().numpy().reshape(-1, *masks.shape[-2:])]
            sizes = torch.from_numpy(np.stack([s for s, _ in found]).reshape(masks.shape)) if found else None
            regions = sum(c for _, c in found)
        patterns = float16_patterns(maps).flatten()
        counts = torch.bincount(patterns, minlength=FLOAT16_BINS)
        if bool(counts[~torch.from_numpy(FLOAT16_FINITE).to(counts.device)].any()):
            _refuse_non_finite(maps)
        flat_masks = masks.flatten()
        self.total.add_(counts)
        anomalous = patterns[flat_masks]
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

    def _steps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(all, anomalous, PRO weight) per distinct float16 score, highest first."""
        state = self.state.cpu().numpy()
        steps = []
        for k in range(3):
            ordered = np.zeros(FLOAT16_BINS, dtype=np.int64)
            np.add.at(ordered, FLOAT16_RANK, state[k * FLOAT16_BINS:(k + 1) * FLOAT16_BINS])
            steps.append(ordered)
        used = np.flatnonzero(steps[0])[::-1]
        return steps[0][used], steps[1][used], steps[2][used]

    def compute(self, fpr_limit: float = 0.3) -> dict[str, float | None]:
        """Pixel AUROC, AUPRO (to ``fpr_limit``), F1-max and AP; None where undefined."""
        self._check_regions()  # also after merging, where the counts of several shards add up
        total, pos, pro = self._steps()
        if not len(total):
            return dict.fromkeys(("auroc", "aupro", "f1max", "ap"))
        regions = self.regions
        pro_curve = np.cumsum(pro) / (float(_PRO_ONE) * regions) if regions else None
        return pixel_curves(pos, total - pos, pro_curve, fpr_limit)

    def rounding_bound(self, fpr_limit: float = 0.3) -> dict[str, float]:
        """How far, in points, float16's rounding can have moved this class's AUROC and AUPRO:
        anomalous and normal pixels rounded to one score tie, and a tie counts half where
        finer scores would have ordered it. Large when the scores span few float16 steps
        (raw maps in a narrow band); per-image normalisation spreads them over [0, 1]."""
        total, pos, pro = self._steps()
        neg = total - pos
        n_pos, n_neg = int(pos.sum()), int(neg.sum())
        bound = {"auroc": 0.0, "aupro": 0.0}
        if n_pos and n_neg:
            bound["auroc"] = 100 * 0.5 * float(np.sum(pos.astype(np.float64) * neg)) / (n_pos * n_neg)
            if self.regions:
                fpr_step = neg / n_neg
                pro_step = pro / (float(_PRO_ONE) * self.regions)
                before = np.concatenate([[0.0], np.cumsum(fpr_step)[:-1]])
                inside = np.clip(np.minimum(before + fpr_step, fpr_limit) - before, 0.0, None)
                bound["aupro"] = 100 * 0.5 * float(np.sum(pro_step * inside)) / fpr_limit
        return bound


def _refuse_non_finite(maps: torch.Tensor) -> None:
    """Name the first map that holds NaN, Inf or a score float16 cannot hold."""
    flat = maps.reshape(len(maps), -1) if maps.ndim > 1 else maps.reshape(1, -1)
    bad = ~torch.isfinite(flat.to(torch.float16)).all(dim=1)
    index = int(torch.nonzero(bad)[0]) if bool(bad.any()) else 0
    raise ValueError(f"score map {index} contains NaN, Inf, or a score beyond float16's range (±{FLOAT16_MAX:,.0f}), "
                     f"which the exact metrics cannot rank; scale the maps (test.py's default per-image "
                     f"normalisation does)")


def pixel_metrics(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> dict[str, float | None]:
    """Pixel AUROC, AUPRO (to ``fpr_limit``), F1-max and AP of one class.

    masks: bool/uint8 (N, H, W); maps: float (N, H, W), kept in their own dtype.
    A metric that needs anomalous pixels (all) or normal pixels (AUROC, AUPRO)
    is None when the class has none.
    """
    masks, maps = as_arrays(masks, maps, check=np.asarray(maps).dtype != np.float16)
    if maps.dtype == np.float16:
        return PixelAccumulator().update(torch.from_numpy(maps), torch.from_numpy(masks)).compute(fpr_limit)
    order, starts, pos, neg = steps_sorted(maps, masks)
    found = [region_sizes(m) for m in masks]
    regions = sum(c for _, c in found)
    pro_curve = None
    if regions:
        sizes = np.stack([s for s, _ in found]).ravel()
        weights = np.divide(1.0, sizes, out=np.zeros(sizes.shape), where=sizes > 0) / regions
        pro_curve = np.cumsum(np.add.reduceat(weights[order], starts))
    return pixel_curves(pos, neg, pro_curve, fpr_limit)
