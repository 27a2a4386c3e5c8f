"""The one inference path: canvases in, maps and scores out, batched on the device.

test.py, predict.py, ``DHRCLIP.predict``, the demo and the benchmark all run
images through ``iter_batches``; ``iter_predictions`` adds the step back to each
image's own size.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data import CanvasDataset, ImageDataset, ImageSource, worker_count
from .distributed import world
from .errors import UserError
from .maps import minmax_normalize
from .model import DHRCLIPModel


@dataclass
class BatchOutput:
    """One batch of results; the maps stay on the device until the consumer copies them."""

    index: np.ndarray            # positions of the batch's images in the dataset
    maps: torch.Tensor           # (B, T, T) float32, smoothed (and normalised if asked), on the device
    scores: np.ndarray           # (B,) image scores
    sizes: np.ndarray            # (B, 2) original (height, width)
    masks: torch.Tensor | None   # (B, T, T) bool on the device, for datasets with masks
    errors: dict[int, str] = field(default_factory=dict)  # dataset position -> why it was skipped
    region_sizes: torch.Tensor | None = None  # (B, T, T) int32 on the device, with CanvasDataset(regions=True)
    regions: np.ndarray | None = None         # (B,) defect regions in each mask, with region_sizes


@dataclass
class Prediction:
    """One image's result."""

    anomaly_map: np.ndarray      # (H, W) float32 at the image's own size, smoothed, not normalised
    score: float                 # image-level anomaly score, P(anomalous)

    @property
    def map_max(self) -> float:
        return float(self.anomaly_map.max())


@torch.no_grad()
def iter_batches(model: DHRCLIPModel, dataset: CanvasDataset | ImageDataset, batch_size: int,
                 num_workers: int | str = 0, map_norm: str = "none", desc: str = "inference"
                 ) -> Iterator[BatchOutput]:
    """Run ``model`` over ``dataset`` in batches: views encoded together, maps smoothed (and,
    with ``map_norm="per-image"``, min-max normalised) on the device, one host copy of the
    scores per batch and none per image. Images the dataset could not read (``error``) are
    left out of the batch and reported in ``errors``."""
    model.eval()
    device = model.device
    text = model.text_features()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=worker_count(num_workers, len(dataset)),
                        pin_memory=device.type == "cuda")
    for batch in tqdm(loader, desc=desc, unit="batch", disable=None if world().is_main else True):
        index, images, sizes = batch["index"].numpy(), batch["image"], batch["size"].numpy()
        errors = {int(i): e for i, e in zip(index, batch.get("error", ())) if e}
        if errors:
            keep = np.array([int(i) not in errors for i in index])
            index, images, sizes = index[keep], images[torch.from_numpy(keep)], sizes[keep]
            if not len(index):
                yield BatchOutput(index=index, maps=torch.empty(0), scores=np.empty(0), sizes=sizes, masks=None,
                                  errors=errors)
                continue
        maps, scores = model(images.to(device, non_blocking=True), text)
        if map_norm == "per-image":
            maps = minmax_normalize(maps)
        finite = torch.isfinite(maps).flatten(1).all(dim=1) & torch.isfinite(scores)
        if not bool(finite.all()):
            bad = dataset.describe(int(index[int((~finite).nonzero()[0])]))
            raise UserError(f"the anomaly map of {bad} contains NaN or Inf; try precision fp32", field="precision")
        on_device = {k: batch[k].to(device, non_blocking=True) for k in ("mask", "region_sizes") if k in batch}
        yield BatchOutput(index=index, maps=maps, scores=scores.cpu().numpy(), sizes=sizes,
                          masks=on_device.get("mask"), errors=errors, region_sizes=on_device.get("region_sizes"),
                          regions=batch["regions"].numpy() if "regions" in batch else None)


def to_image_size(amap: np.ndarray, height: int, width: int) -> np.ndarray:
    """A canvas-size map resized (bilinearly) to the image it was computed from."""
    return cv2.resize(amap, (width, height), interpolation=cv2.INTER_LINEAR)


def iter_predictions(model: DHRCLIPModel, sources: list[ImageSource], batch_size: int, num_workers: int | str = 0,
                     desc: str = "predicting", bit_depth: int | None = None, skip_errors: bool = False
                     ) -> Iterator[tuple[int, Prediction | str]]:
    """(position in ``sources``, Prediction) for every image, in batches, maps at each image's own
    size. With ``skip_errors`` an unreadable image gives (position, why) instead of stopping."""
    dataset = ImageDataset(sources, model.config.target_image_size, bit_depth, skip_errors)
    for batch in iter_batches(model, dataset, batch_size, num_workers, desc=desc):
        yield from batch.errors.items()
        maps = batch.maps.cpu().numpy()
        for k, i in enumerate(batch.index):
            h, w = (int(v) for v in batch.sizes[k])
            yield int(i), Prediction(anomaly_map=to_image_size(maps[k], h, w), score=float(batch.scores[k]))
