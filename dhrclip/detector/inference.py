"""The one inference path: canvases in, maps and scores out, batched on the device.

test.py, predict.py, ``DHRCLIP.predict``, the demo and the benchmark all run
images through ``iter_batches``; ``iter_predictions`` adds the step back to each
image's own size.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config.run import RunOptions
from ..core.fewshot import ReferenceBank
from ..core.grid import Grid
from ..core.maps import minmax_normalize
from ..core.network import DHRCLIPNetwork
from ..data.canvases import CanvasDataset, batches, placements
from ..data.images import ImageSource
from ..errors import UserError
from .bank import check_bank
from .results import Prediction


@dataclass
class BatchOutput:
    """One batch of results; the maps stay on the device until the consumer copies them."""

    index: np.ndarray            # positions of the batch's images in the dataset
    maps: list[torch.Tensor]     # per image, its smoothed (and normalised if asked) float32 map on the device,
    #   cropped to the image's box on its canvas
    scores: np.ndarray           # (B,) image scores
    sizes: np.ndarray            # (B, 2) original (height, width)
    masks: list[torch.Tensor] | None  # bool on the device, for datasets with masks
    errors: dict[int, str] = field(default_factory=dict)  # dataset position -> why it was skipped
    region_sizes: list[torch.Tensor] | None = None  # int32, with Masks.SCORED
    regions: np.ndarray | None = None         # (B,) defect regions in each mask, with region_sizes
    grids: list[tuple[int, int]] = field(default_factory=list)  # (rows, cols) of each image's tiles


def _per_image(value: torch.Tensor | list[torch.Tensor], keep: np.ndarray, device: torch.device
               ) -> list[torch.Tensor]:
    """A batch field (stacked, or listed when shapes differ) as the kept images' tensors on the device."""
    return [value[k].to(device, non_blocking=True) for k in np.flatnonzero(keep)]


@torch.no_grad()
def iter_batches(model: DHRCLIPNetwork, dataset: CanvasDataset, map_norm: str = "none", desc: str = "inference",
                 exclude: list[int] | None = None, progress: bool = True) -> Iterator[BatchOutput]:
    """Run ``model`` over ``dataset`` in batches (as the dataset's ``run`` says): views encoded
    together, maps smoothed (and, with ``map_norm="per-image"``, min-max normalised) on the
    device, one host copy of the scores per batch and none per image. Images the dataset could not read (``error``) are
    left out of the batch and reported in ``errors``. Unless the grid is uniform, batches
    come grouped by canvas, not in dataset order. ``exclude``: per dataset position, the
    reference image (of the model's few-shot bank) that image must not be matched with, -1 for
    none. ``progress``: show a progress bar (off in all but one process of a job)."""
    model.eval()
    device = model.device
    text = model.text_features()
    if model.reference is not None:  # a bank answers only for the views it was built from
        check_bank(model.reference, model.config, model.token_width, dataset.grid, "bank")
    bar = tqdm(total=len(dataset), desc=desc, unit="image", disable=None if progress else True)
    for batch in batches(dataset, device.type == "cuda"):
        index, images, sizes = batch["index"].numpy(), batch["image"], batch["size"].numpy()
        bar.update(len(index))
        errors = {int(i): e for i, e in zip(index, batch.get("error", ())) if e}
        keep = np.array([int(i) not in errors for i in index])
        if not keep.any():
            yield BatchOutput(index=index[keep], maps=[], scores=np.empty(0), sizes=sizes[keep], masks=None,
                              errors=errors)
            continue
        placed = [p for p, kept in zip(placements(batch), keep) if kept]
        index, images, sizes = index[keep], images[torch.from_numpy(keep)].to(device, non_blocking=True), sizes[keep]
        skip = torch.tensor([exclude[int(i)] for i in index], device=device) if exclude is not None else None
        maps, scores = model(images, placed, text, skip)
        maps = [minmax_normalize(m[None])[0] for m in maps] if map_norm == "per-image" else list(maps)
        finite = torch.stack([torch.isfinite(m).all() for m in maps]) & torch.isfinite(scores)
        if not bool(finite.all()):
            bad = dataset.describe(int(index[int((~finite).nonzero()[0])]))
            if model.precision != torch.float32:
                raise UserError(f"the anomaly map of {bad} contains NaN or Inf at "
                                f"{str(model.precision).removeprefix('torch.')}; try precision fp32", field="precision")
            raise UserError(f"the anomaly map of {bad} contains NaN or Inf in fp32: the weights or the prompts hold "
                            f"values out of range; check that pretrained and the checkpoint are the files meant")
        truth = {k: _per_image(batch[k], keep, device) for k in ("mask", "region_sizes") if k in batch}
        yield BatchOutput(index=index, maps=maps, scores=scores.cpu().numpy(), sizes=sizes,
                          masks=truth.get("mask"), errors=errors, region_sizes=truth.get("region_sizes"),
                          regions=batch["regions"].numpy()[keep] if "regions" in batch else None,
                          grids=[(p.rows, p.cols) for p in placed])
    bar.close()


def to_image_size(amap: np.ndarray, height: int, width: int) -> np.ndarray:
    """A map resized (bilinearly) to the image it was computed from."""
    return cv2.resize(amap, (width, height), interpolation=cv2.INTER_LINEAR)


def iter_predictions(model: DHRCLIPNetwork, sources: Sequence[ImageSource], grid: Grid, run: RunOptions,
                     desc: str = "predicting", skip_errors: bool = False, exclude: list[int] | None = None,
                     progress: bool = True) -> Iterator[tuple[int, Prediction | str]]:
    """(position in ``sources``, Prediction) for every image, read and batched as ``run`` says,
    maps at each image's own size. With ``skip_errors`` an unreadable image gives (position, why)
    instead of stopping. ``exclude`` and ``progress`` as in ``iter_batches``."""
    dataset = CanvasDataset(sources, grid, run, skip_errors=skip_errors)
    for batch in iter_batches(model, dataset, desc=desc, exclude=exclude, progress=progress):
        yield from batch.errors.items()
        for k, i in enumerate(batch.index):
            h, w = (int(v) for v in batch.sizes[k])
            yield int(i), Prediction(anomaly_map=to_image_size(batch.maps[k].cpu().numpy(), h, w),
                                     score=float(batch.scores[k]), grid=batch.grids[k])


@torch.no_grad()
def build_reference(model: DHRCLIPNetwork, dataset: CanvasDataset, sources: list[str] | None = None,
                    progress: bool = True) -> ReferenceBank:
    """The few-shot bank of the images of ``dataset`` (docs/method.md §11): their normalised V-V
    patch tokens per tapped layer and view kind, padding tokens left out. ``sources`` names the
    images (default: the dataset's own descriptions)."""
    model.eval()
    layers = len(model.config.features_list)
    global_parts: list[list[torch.Tensor]] = [[] for _ in range(layers)]
    tile_parts: list[list[torch.Tensor]] = [[] for _ in range(layers)]
    global_owner, tile_owner = [], []
    for batch in tqdm(batches(dataset, model.device.type == "cuda"),
                      desc="reference images", unit="batch", disable=None if progress else True):
        if any(batch.get("error", ())):
            bad = next(e for e in batch["error"] if e)
            raise UserError(f"a reference image could not be read: {bad}", field="reference")
        placed = placements(batch)
        feats = model.encode_views(batch["image"].to(model.device), placed)
        keep_g, keep_t = (m.cpu() for m in feats.layout.tokens_inside(feats.global_grid, feats.tile_grid,
                                                                       len(placed)))
        per_image = feats.tiles.count
        for k, index in enumerate(batch["index"].tolist()):
            inside_t = keep_t[k * per_image:(k + 1) * per_image].flatten()
            if not keep_g[k].any() or not inside_t.any():
                raise UserError(f"reference image {dataset.describe(index)} is too small to cover one "
                                f"token of its views; use larger good images", field="reference")
            for layer in range(layers):
                g = F.normalize(feats.global_tokens[layer][k, 1:].float(), dim=-1)
                t = F.normalize(feats.tile_tokens[layer][k * per_image:(k + 1) * per_image, 1:].float(),
                                dim=-1).flatten(0, 1)
                global_parts[layer].append(g[keep_g[k].to(g.device)])
                tile_parts[layer].append(t[inside_t.to(t.device)])
            global_owner.append(torch.full((len(global_parts[0][-1]),), index, dtype=torch.long))
            tile_owner.append(torch.full((len(tile_parts[0][-1]),), index, dtype=torch.long))
    if not global_owner:
        raise UserError("no reference images", field="reference")
    names = sources if sources is not None else [dataset.describe(i) for i in range(len(dataset))]
    return ReferenceBank(
        global_tokens=[torch.cat(parts) for parts in global_parts],
        tile_tokens=[torch.cat(parts) for parts in tile_parts],
        global_owner=torch.cat(global_owner).to(model.device), tile_owner=torch.cat(tile_owner).to(model.device),
        config=model.config, grid=dataset.grid.record(), sources=list(names))
