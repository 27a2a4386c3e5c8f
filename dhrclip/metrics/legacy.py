"""The reference implementation's AUPRO, for comparison with published tables only."""
from __future__ import annotations

import numpy as np
from skimage.measure import label as label_regions
from sklearn.metrics import auc as sklearn_auc

from .curves import as_arrays


def legacy_aupro(masks: np.ndarray, maps: np.ndarray, max_step: int = 200, expect_fpr: float = 0.3) -> float | None:
    """The reference implementation's AUPRO, for comparison with published tables only.

    200 evenly spaced thresholds between the map's min and max, FPR axis cut
    below ``expect_fpr`` and then min-max rescaled: biased low and not
    invariant to monotone transforms of the scores (docs/method.md §9). Regions are
    labelled once here instead of at every threshold; the value is the same.
    """
    masks, maps = as_arrays(masks, maps)
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
    pro_steps, fpr_steps = [], []
    for th in np.arange(low, high, delta):
        above = maps > th
        hits = np.bincount(labels[above], minlength=offset + 1)[1:]
        pro_steps.append(np.mean(hits / sizes))
        fpr_steps.append(np.logical_and(normal, above).sum() / normal.sum())
    pros, fprs = np.array(pro_steps), np.array(fpr_steps)
    keep = fprs < expect_fpr
    fprs, pros = fprs[keep], pros[keep]
    if len(fprs) < 2 or fprs.max() == fprs.min():
        return None
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return float(sklearn_auc(fprs, pros))
