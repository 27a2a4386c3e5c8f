"""Pixel-level metrics (docs/method.md §10): AUROC, AUPRO, F1-max and AP, exact, as additive state.

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

from ..errors import UserError
from .curves import as_arrays, check_finite, pixel_curves, steps_sorted

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
        check_finite(maps)
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
        return pixel_curves(pos[used], total[used] - pos[used], pro_curve, fpr_limit)


def pixel_metrics(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> dict[str, float | None]:
    """Pixel AUROC, AUPRO (to ``fpr_limit``), F1-max and AP of one class.

    masks: bool/uint8 (N, H, W); maps: float (N, H, W), kept in their own dtype.
    A metric that needs anomalous pixels (all) or normal pixels (AUROC, AUPRO)
    is None when the class has none.
    """
    masks, maps = as_arrays(masks, maps)
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
