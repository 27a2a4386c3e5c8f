"""Images as the canvases of their grid, decoded in DataLoader workers and batched by canvas shape.

One dataset serves every path: meta.json items with their ground truth (training, testing) and
plain image sources (prediction, few-shot references). Each sample carries its canvas and its
``Placement``; everything after runs batched on the device.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from enum import Enum
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..config.run import RunOptions
from ..core.grid import Grid, Placement
from ..errors import UserError
from ..metrics.pixel import region_sizes
from .images import ImageSource, canvas_array, image_from_source, load_mask
from .meta import Item


class Masks(Enum):
    """Which ground-truth masks a dataset of items yields, and at which size."""

    ON_CANVAS = "canvas"  # placed on the canvas like the image (training)
    SCORED = "scored"     # at the grid's scored size, with their defect regions (testing)


def to_canvas(img: Image.Image, size: int | tuple[int, int]) -> torch.Tensor:
    """``images.canvas_array`` as a uint8 (3, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(canvas_array(img, size)))


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a bool mask to size × size (or (height, width)), binarised at 0.5
    (docs/method.md §2)."""
    h, w = (size, size) if isinstance(size, int) else size
    img = Image.fromarray(mask.astype(np.float32), mode="F")
    resized = np.asarray(img.resize((w, h), Image.Resampling.BILINEAR))
    return torch.from_numpy(resized > 0.5)


def placed_canvas(img: Image.Image, placed: Placement) -> torch.Tensor:
    """The image resized into its box on its canvas; the padding is filled by the network."""
    if placed.fills_canvas:
        return to_canvas(img, placed.tiles.size)
    canvas = torch.zeros(3, *placed.tiles.size, dtype=torch.uint8)
    canvas[:, placed.box[0], placed.box[1]] = to_canvas(img, (placed.height, placed.width))
    return canvas


def placed_mask(mask: np.ndarray, placed: Placement) -> torch.Tensor:
    """A mask placed on the canvas as its image is."""
    if placed.fills_canvas:
        return resize_mask(mask, placed.tiles.size)
    out = torch.zeros(*placed.tiles.size, dtype=torch.bool)
    out[placed.box[0], placed.box[1]] = resize_mask(mask, (placed.height, placed.width))
    return out


def placements(batch: dict) -> list[Placement]:
    """The placements a batch carries, one per image."""
    return [Placement.from_tuple(tuple(row)) for row in batch["placement"].tolist()]


def collate(samples: list[dict]) -> dict:
    """A batch of samples: tensors of one shape stacked, of different shapes (masks at each
    image's own size) listed, numbers as a tensor, text as a list."""
    batch: dict = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        if isinstance(values[0], torch.Tensor):
            same = all(v.shape == values[0].shape for v in values)
            batch[key] = torch.stack(values) if same else values
        elif isinstance(values[0], (int, float)):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch


class CanvasDataset(Dataset):
    """Images as model-ready samples on the canvases of ``grid``: ``image`` uint8 (3, H, W),
    ``placement`` (``Placement.to_tuple``), ``index`` and original ``size``.

    ``sources`` are meta.json ``Item``\\ s (their samples also carry the ``label``, and with
    ``masks`` the bool ``mask``: on the canvas, or at the grid's scored size with its defect
    regions' ``region_sizes`` (int32) and ``regions`` count, the mask-only part of the PRO
    metric computed here beside the mask) or image sources: paths, PIL images, uint8 arrays.
    Images are read as ``run`` says (``bit_depth``, ``max_megapixels``). With ``skip_errors`` an
    unreadable image does not stop the run: its sample carries the message in ``error`` (empty
    for good ones) and a blank canvas.
    """

    def __init__(self, sources: Sequence[Item | ImageSource], grid: Grid, run: RunOptions | None = None,
                 masks: Masks | None = None, skip_errors: bool = False) -> None:
        self.sources = list(sources)
        self.grid = grid
        self.run = run or RunOptions()
        self.masks = masks
        self.skip_errors = skip_errors

    def __len__(self) -> int:
        return len(self.sources)

    def describe(self, index: int) -> str:
        source = self.sources[index]
        if isinstance(source, Item):
            return str(source.image)
        return str(source) if isinstance(source, (str, Path)) else f"image {index} of the batch"

    def __getitem__(self, index: int) -> dict:
        source = self.sources[index]
        item = source if isinstance(source, Item) else None
        try:
            img = image_from_source(source.image if isinstance(source, Item) else source, self.run.bit_depth,
                                    self.run.max_pixels)
            placed = self.grid.place(img.height, img.width)
            truth = self._truth(item, img, placed) if item is not None and self.masks is not None else {}
        except UserError as exc:  # the image or its mask
            if not self.skip_errors:
                raise
            return self._blank(index, item, str(exc))
        sample = {"image": placed_canvas(img, placed), "placement": torch.tensor(placed.to_tuple()), "index": index,
                  "size": torch.tensor([img.height, img.width]), **truth}
        if item is not None:
            sample["label"] = item.anomaly
        return {**sample, "error": ""} if self.skip_errors else sample

    def _blank(self, index: int, item: Item | None, error: str) -> dict:
        """The sample of an image that could not be read: a blank canvas with the keys of a read
        one (an empty mask, no regions), so that it batches with them until inference drops it."""
        blank = self.grid.place(1, 1)
        sample = {"image": torch.zeros(3, *blank.tiles.size, dtype=torch.uint8), "index": index,
                  "size": torch.tensor([0, 0]), "placement": torch.tensor(blank.to_tuple()), "error": error}
        if item is not None:
            sample["label"] = item.anomaly
            if self.masks is Masks.ON_CANVAS:
                sample["mask"] = torch.zeros(blank.tiles.size, dtype=torch.bool)
            elif self.masks is Masks.SCORED:
                sample.update(mask=torch.zeros(0, 0, dtype=torch.bool), region_sizes=torch.zeros(0, dtype=torch.int32),
                              regions=0)
        return sample

    def _truth(self, item: Item, img: Image.Image, placed: Placement) -> dict:
        if item.masks:
            mask = load_mask(item.masks, item.mask_threshold, self.run.max_pixels)
            if mask.shape != (img.height, img.width):
                raise UserError(f"mask {item.masks[0]} is {mask.shape[1]}x{mask.shape[0]} but its image "
                                f"{item.image} is {img.width}x{img.height}")
        else:
            mask = np.zeros((img.height, img.width), dtype=bool)
        if self.masks is Masks.ON_CANVAS:
            return {"mask": placed_mask(mask, placed)}
        size = self.grid.scored_size(placed, img.height, img.width)
        scored = torch.from_numpy(mask) if size == mask.shape else resize_mask(mask, size)
        sizes, count = region_sizes(scored.numpy())
        return {"mask": scored, "region_sizes": torch.from_numpy(sizes), "regions": count}


def worker_count(num_workers: int | str, images: int, on_gpu: bool) -> int:
    """DataLoader workers: a count as given; ``auto`` starts none for small jobs, where worker
    start-up costs more than it saves, and for large ones up to 4: one per core beside a GPU, but
    with the model on the CPU one per four cores, since decoding then takes cores from the
    model's own threads (on 2 cores none: there two workers gained test.py nothing)."""
    if num_workers != "auto":
        return int(num_workers)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 0 if images < 64 else min(4, cores if on_gpu else cores // 4)


def batches(dataset: CanvasDataset, pin_memory: bool = False) -> Iterator[dict]:
    """Collated batches of canvases of one shape, of the dataset's ``run.batch_size`` images,
    decoded by ``run.num_workers`` workers. On a uniform grid they come in dataset order;
    otherwise images are grouped by canvas as they are decoded: a group is run when it has
    ``batch_size`` images, and the rest at the end. An unreadable image (``error``) comes alone."""
    batch_size = dataset.run.batch_size
    workers = worker_count(dataset.run.num_workers, len(dataset), pin_memory)
    if dataset.grid.uniform:
        yield from DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=pin_memory,
                              collate_fn=collate)
        return
    groups: dict[tuple[int, ...], list[dict]] = {}
    for sample in DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory):
        if sample.get("error"):
            yield collate([sample])
            continue
        key = tuple(sample["placement"][:5].tolist())  # the canvas and its tiles
        groups.setdefault(key, []).append(sample)
        if len(groups[key]) == batch_size:
            yield collate(groups.pop(key))
    for group in groups.values():
        yield collate(group)
