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
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.canvases import AutoGrid, CanvasDataset, ImageDataset, collate, placements, worker_count
from ..data.images import ImageSource
from ..engine.distributed import world
from ..errors import UserError
from ..core.fewshot import ReferenceBank, patch_inside
from ..core.maps import minmax_normalize
from ..core.network import DHRCLIPModel


@dataclass
class BatchOutput:
    """One batch of results; the maps stay on the device until the consumer copies them."""

    index: np.ndarray            # positions of the batch's images in the dataset
    maps: torch.Tensor | list[torch.Tensor]  # smoothed (and normalised if asked) float32 maps on the device:
    #   (B, T, T) on the fixed canvas, or with an AutoGrid one (h, w) map per image, its box on its canvas
    scores: np.ndarray           # (B,) image scores
    sizes: np.ndarray            # (B, 2) original (height, width)
    masks: torch.Tensor | list[torch.Tensor] | None  # bool on the device, for datasets with masks
    errors: dict[int, str] = field(default_factory=dict)  # dataset position -> why it was skipped
    region_sizes: torch.Tensor | list[torch.Tensor] | None = None  # int32, with CanvasDataset(regions=True)
    regions: np.ndarray | None = None         # (B,) defect regions in each mask, with region_sizes
    grids: list[tuple[int, int]] = field(default_factory=list)  # (rows, cols) of each image's tiles


@dataclass
class Prediction:
    """One image's result."""

    anomaly_map: np.ndarray      # (H, W) float32 at the image's own size, smoothed, not normalised
    score: float                 # image-level anomaly score, P(anomalous)
    grid: tuple[int, int] = (0, 0)  # (rows, cols) of the tiles it was seen through

    @property
    def map_max(self) -> float:
        return float(self.anomaly_map.max())


def _loader(dataset: CanvasDataset | ImageDataset, batch_size: int, num_workers: int | str,
            device: torch.device) -> Iterator[dict]:
    """Collated batches. With an AutoGrid, images are grouped by grid as they are decoded, so
    every batch holds canvases of one size: a group is run when it has ``batch_size`` images,
    and the rest at the end."""
    workers = worker_count(num_workers, len(dataset))
    pin = device.type == "cuda"
    if not isinstance(dataset.canvas, AutoGrid):
        yield from DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=pin, collate_fn=collate)
        return
    groups: dict[tuple[int, int], list[dict]] = {}
    for sample in DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin):
        if sample.get("error"):
            yield collate([sample])
            continue
        key = tuple(int(v) for v in sample["placement"][:2])
        groups.setdefault(key, []).append(sample)
        if len(groups[key]) == batch_size:
            yield collate(groups.pop(key))
    for group in groups.values():
        yield collate(group)


def _on_device(value: torch.Tensor | list[torch.Tensor], device: torch.device) -> torch.Tensor | list[torch.Tensor]:
    if isinstance(value, list):
        return [v.to(device, non_blocking=True) for v in value]
    return value.to(device, non_blocking=True)


@torch.no_grad()
def iter_batches(model: DHRCLIPModel, dataset: CanvasDataset | ImageDataset, batch_size: int,
                 num_workers: int | str = 0, map_norm: str = "none", desc: str = "inference",
                 exclude: list[int] | None = None) -> Iterator[BatchOutput]:
    """Run ``model`` over ``dataset`` in batches: views encoded together, maps smoothed (and,
    with ``map_norm="per-image"``, min-max normalised) on the device, one host copy of the
    scores per batch and none per image. Images the dataset could not read (``error``) are
    left out of the batch and reported in ``errors``. With an ``AutoGrid`` dataset, batches
    come grouped by grid, not in dataset order. ``exclude``: per dataset position, the reference
    image (of the model's few-shot bank) that image must not be matched with, -1 for none."""
    model.eval()
    device = model.device
    text = model.text_features()
    auto = isinstance(dataset.canvas, AutoGrid)
    if model.reference is not None:  # a bank answers only for the views it was built from
        model.reference.check(model.config, "auto" if auto else "fixed", dataset.canvas.max_tiles if auto else 9,
                              "bank")
    progress = tqdm(total=len(dataset), desc=desc, unit="image", disable=None if world().is_main else True)
    for batch in _loader(dataset, batch_size, num_workers, device):
        index, images, sizes = batch["index"].numpy(), batch["image"], batch["size"].numpy()
        progress.update(len(index))
        errors = {int(i): e for i, e in zip(index, batch.get("error", ())) if e}
        if errors:
            keep = np.array([int(i) not in errors for i in index])
            if not keep.any():
                yield BatchOutput(index=index[keep], maps=torch.empty(0), scores=np.empty(0), sizes=sizes[keep],
                                  masks=None, errors=errors)
                continue
            index, images, sizes = index[keep], images[torch.from_numpy(keep)], sizes[keep]
        images = images.to(device, non_blocking=True)
        skip = torch.tensor([exclude[int(i)] for i in index], device=device) if exclude is not None else None
        if auto:
            placed = placements(batch)
            maps, scores = model.forward_placed(images, model.grid(placed[0].rows, placed[0].cols), placed,
                                                text, skip)
            if map_norm == "per-image":
                maps = [minmax_normalize(m[None])[0] for m in maps]
            finite = torch.stack([torch.isfinite(m).all() for m in maps]) & torch.isfinite(scores)
            grids = [(p.rows, p.cols) for p in placed]
        else:
            maps, scores = model(images, text, skip)
            if map_norm == "per-image":
                maps = minmax_normalize(maps)
            finite = torch.isfinite(maps).flatten(1).all(dim=1) & torch.isfinite(scores)
            grids = [(model.tiles.rows, model.tiles.cols)] * len(index)
        if not bool(finite.all()):
            bad = dataset.describe(int(index[int((~finite).nonzero()[0])]))
            raise UserError(f"the anomaly map of {bad} contains NaN or Inf; try precision fp32", field="precision")
        on_device = {k: _on_device(batch[k], device) for k in ("mask", "region_sizes") if k in batch}
        yield BatchOutput(index=index, maps=maps, scores=scores.cpu().numpy(), sizes=sizes,
                          masks=on_device.get("mask"), errors=errors, region_sizes=on_device.get("region_sizes"),
                          regions=batch["regions"].numpy() if "regions" in batch else None, grids=grids)
    progress.close()


def to_image_size(amap: np.ndarray, height: int, width: int) -> np.ndarray:
    """A map resized (bilinearly) to the image it was computed from."""
    return cv2.resize(amap, (width, height), interpolation=cv2.INTER_LINEAR)


def canvas_for(model: DHRCLIPModel, grid: str, max_tiles: int) -> int | AutoGrid:
    """What a dataset makes of images for ``model``: T (the fixed canvas) or an AutoGrid."""
    return AutoGrid(model.config.patch_image_size, max_tiles) if grid == "auto" else model.config.target_image_size


def iter_predictions(model: DHRCLIPModel, sources: list[ImageSource], batch_size: int, num_workers: int | str = 0,
                     desc: str = "predicting", bit_depth: int | None = None, skip_errors: bool = False,
                     grid: str = "fixed", max_tiles: int = 9, exclude: list[int] | None = None
                     ) -> Iterator[tuple[int, Prediction | str]]:
    """(position in ``sources``, Prediction) for every image, in batches, maps at each image's own
    size. With ``skip_errors`` an unreadable image gives (position, why) instead of stopping.
    ``grid``: "fixed" (the T×T canvas) or "auto" (a grid per image, at most ``max_tiles``);
    ``exclude`` as in ``iter_batches``."""
    dataset = ImageDataset(sources, canvas_for(model, grid, max_tiles), bit_depth, skip_errors)
    for batch in iter_batches(model, dataset, batch_size, num_workers, desc=desc, exclude=exclude):
        yield from batch.errors.items()
        for k, i in enumerate(batch.index):
            h, w = (int(v) for v in batch.sizes[k])
            yield int(i), Prediction(anomaly_map=to_image_size(batch.maps[k].cpu().numpy(), h, w),
                                     score=float(batch.scores[k]), grid=batch.grids[k])


@torch.no_grad()
def build_reference(model: DHRCLIPModel, dataset: CanvasDataset | ImageDataset, batch_size: int,
                    num_workers: int | str = 0, sources: list[str] | None = None) -> ReferenceBank:
    """The few-shot bank of the images of ``dataset`` (docs/method.md §11): their normalised V-V
    patch tokens per tapped layer and view kind, padding tokens left out. ``sources`` names the
    images (default: the dataset's own descriptions)."""
    model.eval()
    auto = isinstance(dataset.canvas, AutoGrid)
    layers = len(model.config.features_list)
    global_parts: list[list[torch.Tensor]] = [[] for _ in range(layers)]
    tile_parts: list[list[torch.Tensor]] = [[] for _ in range(layers)]
    global_owner, tile_owner = [], []
    for batch in tqdm(_loader(dataset, batch_size, num_workers, model.device), desc="reference images",
                      unit="batch", disable=None if world().is_main else True):
        if any(batch.get("error", ())):
            bad = next(e for e in batch["error"] if e)
            raise UserError(f"a reference image could not be read: {bad}", field="reference")
        images = batch["image"].to(model.device)
        placed = placements(batch)
        tiles = model.grid(placed[0].rows, placed[0].cols) if auto else model.tiles
        feats = model.encode_views(images, tiles, placed)
        for k, index in enumerate(batch["index"].tolist()):
            keep_g = keep_t = None
            if auto:
                keep_g = patch_inside(placed[k], tiles, feats.global_size, feats.global_grid)
                keep_t = torch.cat([patch_inside(placed[k], tiles, None, feats.tile_grid, origin)
                                    for origin in tiles.boxes])
                if not keep_g.any() or not keep_t.any():
                    raise UserError(f"reference image {dataset.describe(index)} is too small to cover one "
                                    f"token of its views; use larger good images", field="reference")
            for layer in range(layers):
                g = F.normalize(feats.global_tokens[layer][k, 1:].float(), dim=-1)
                t = F.normalize(feats.tile_tokens[layer][k * tiles.count:(k + 1) * tiles.count, 1:].float(),
                                dim=-1).flatten(0, 1)
                global_parts[layer].append(g[keep_g.to(g.device)] if keep_g is not None else g)
                tile_parts[layer].append(t[keep_t.to(t.device)] if keep_t is not None else t)
            global_owner.append(torch.full((len(global_parts[0][-1]),), index, dtype=torch.long))
            tile_owner.append(torch.full((len(tile_parts[0][-1]),), index, dtype=torch.long))
    if not global_owner:
        raise UserError("no reference images", field="reference")
    names = sources if sources is not None else [dataset.describe(i) for i in range(len(dataset))]
    return ReferenceBank(
        global_tokens=[torch.cat(parts) for parts in global_parts],
        tile_tokens=[torch.cat(parts) for parts in tile_parts],
        global_owner=torch.cat(global_owner).to(model.device), tile_owner=torch.cat(tile_owner).to(model.device),
        config=model.config, grid="auto" if auto else "fixed",
        max_tiles=dataset.canvas.max_tiles if auto else 9, sources=list(names))
