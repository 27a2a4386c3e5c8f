"""The training batches: encoded views of the training images, batch by batch, whatever lies
behind them (docs/method.md §7).

``FeatureBatches`` hides three things from the training loop:

- the grid groups: a batch holds images of one canvas shape, so on a grid that is not uniform
  the images are grouped by the tile grid their size gets;
- the processes: under torchrun each process owns a contiguous shard of the images and encodes
  only those; every step draws the same global batch as one process would, and a process
  gets the part of it that it owns, with its share of the batch (possibly none);
- the feature cache: the first epoch encodes the views and fills the cache, later epochs read it.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config.run import RunOptions
from ..core.grid import Grid
from ..core.network import DHRCLIPNetwork, ViewFeatures
from ..data.canvases import CanvasDataset, Masks, collate, placements, worker_count
from ..data.images import image_shape
from ..data.meta import Item
from .distributed import World
from .feature_cache import GroupedFeatureCache

log = logging.getLogger(__name__)


@dataclass
class FeatureBatch:
    """This process's part of one global batch: its images' encoded views, masks and labels, and
    their share of the global batch (the weight of their mean loss in the batch's mean)."""

    feats: ViewFeatures
    masks: torch.Tensor
    labels: torch.Tensor
    share: float


class FeatureBatches:
    """Each epoch's batches of encoded training views, for one process of the job (see the module
    docstring). A context manager: leaving it frees the cache and removes its files."""

    def __init__(self, model: DHRCLIPNetwork, items: list[Item], grid: Grid, run: RunOptions, cache_mode: str,
                 cache_folder: Path, here: World) -> None:
        self.model, self.count, self.batch_size, self.num_workers = model, len(items), run.batch_size, run.num_workers
        self.owned = here.shard(len(items))
        self.groups = _grid_groups(items, grid)
        self.dataset = CanvasDataset(items[self.owned.start:self.owned.stop], grid, run, Masks.ON_CANVAS)
        self.cache_folder = cache_folder
        self.shared_folder = here.size > 1
        self.cache = None if cache_mode == "off" else GroupedFeatureCache(
            cache_mode, self.groups[self.owned.start:self.owned.stop], model.device, cache_folder)
        self.show = here.is_main

    def __enter__(self) -> FeatureBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cache is not None:
            self.cache.close()
            if self.shared_folder:
                with contextlib.suppress(OSError):  # the shared feature_cache/ folder, once every rank's is gone
                    self.cache_folder.parent.rmdir()

    def epoch(self, generator: torch.Generator, desc: str) -> Iterator[FeatureBatch | None]:
        """One epoch's batches in the order ``generator`` draws; None for a global batch of which
        this process owns no image (it still takes part in the step)."""
        order = torch.randperm(self.count, generator=generator)
        local = [(mine, size) for mine, size in _local_batches(order, self.batch_size, self.owned, self.groups)]
        loaded = self._load([mine for mine, _ in local])
        for (mine, size), batch in tqdm(zip(local, loaded), total=len(local), desc=desc, leave=False,
                                        disable=None if self.show else True):
            if batch is None:
                yield None
            else:
                feats, masks, labels = batch
                yield FeatureBatch(feats, masks, labels, len(mine) / size)

    def _load(self, batches: list[torch.Tensor]
              ) -> Iterator[tuple[ViewFeatures, torch.Tensor, torch.Tensor] | None]:
        """(view features, masks, labels) per batch of shard positions, from the cache once it is
        full; None for an empty batch."""
        device = self.model.device
        if self.cache is not None and self.cache.complete:
            for indices in batches:
                yield self.cache.load(indices, device) if len(indices) else None
            return
        filled: Any = [indices for indices in batches if len(indices)]  # index tensors serve as index lists
        loader = iter(DataLoader(self.dataset, batch_sampler=filled, pin_memory=device.type == "cuda",
                                 num_workers=worker_count(self.num_workers, len(self.dataset), device.type == "cuda"),
                                 persistent_workers=False, collate_fn=collate))
        for indices in batches:
            if not len(indices):
                yield None
                continue
            batch = next(loader)
            images = batch["image"].to(device, non_blocking=True)
            masks = batch["mask"].to(device, non_blocking=True)
            labels = batch["label"].to(device, non_blocking=True)
            feats = self.model.encode_views(images, placements(batch))
            if self.cache is not None:
                self.cache.store(indices, feats, masks, labels, feats.tiles.count)
            yield feats, masks, labels


def _grid_groups(items: list[Item], grid: Grid) -> list[int]:
    """Each image's group: images of one group share a canvas (on a grid that is not uniform, the
    tile grid its size gets, read from the image headers)."""
    if grid.uniform:
        return [0] * len(items)
    grids = [(placed.rows, placed.cols) for placed in (grid.place(*image_shape(item.image)) for item in items)]
    names = {g: k for k, g in enumerate(sorted(set(grids)))}
    log.info("%s: %s", grid.describe(), ", ".join(f"{grids.count(g)} images on {g[0]}x{g[1]} tiles" for g in names))
    return [names[g] for g in grids]


def _global_batches(order: torch.Tensor, batch_size: int, groups: list[int]) -> list[torch.Tensor]:
    """``order`` cut into batches of ``batch_size`` images of one group: each group's images in
    their order in ``order``, batches ranked by where their first image falls in it. With one
    group this is ``order.split(batch_size)``."""
    if len(set(groups)) <= 1:
        return list(order.split(batch_size))
    group = torch.tensor(groups)[order]
    batches = [chunk for g in group.unique() for chunk in order[group == g].split(batch_size)]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    return sorted(batches, key=lambda b: int(rank[b[0]]))


def _local_batches(order: torch.Tensor, batch_size: int, owned: range,
                   groups: list[int]) -> list[tuple[torch.Tensor, int]]:
    """The global batches of ``order`` (as one process draws them), each as the positions of its
    images in this rank's shard ``owned`` and the global batch's size."""
    batches = []
    for batch in _global_batches(order, batch_size, groups):
        mine = batch[(batch >= owned.start) & (batch < owned.stop)] - owned.start
        batches.append((mine, len(batch)))
    return batches
