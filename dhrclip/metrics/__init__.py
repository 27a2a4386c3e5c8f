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
from .curves import area_to_limit
from .image import ImageAccumulator, image_metrics
from .legacy import legacy_aupro
from .pixel import (
    FLOAT16_BINS,
    FLOAT16_RANK,
    MAX_REGIONS,
    PixelAccumulator,
    float16_patterns,
    pixel_metrics,
    region_sizes,
)

__all__ = [
    "FLOAT16_BINS",
    "FLOAT16_RANK",
    "MAX_REGIONS",
    "ImageAccumulator",
    "PixelAccumulator",
    "area_to_limit",
    "float16_patterns",
    "image_metrics",
    "legacy_aupro",
    "pixel_metrics",
    "region_sizes",
]
