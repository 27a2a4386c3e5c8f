"""Reading images, masks and meta.json indexes (docs/method.md §8) into canvases for the model."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import UserError
from .images import ImageSource, canvas_array, image_from_source, load_mask, load_rgb
from ..metrics import region_sizes
from ..core.tiling import Placement, place

log = logging.getLogger(__name__)

ITEM_KEYS = ("img_path", "mask_path", "cls_name", "specie_name", "anomaly")


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


@dataclass(frozen=True)
class AutoGrid:
    """``grid="auto"``: each image gets its own rows × cols grid of ``tile``-pixel tiles
    (``tiling.choose_grid``, at most ``max_tiles``) and is placed, aspect kept, on a
    rows·tile × cols·tile canvas."""

    tile: int
    max_tiles: int = 9


def _placed(img: Image.Image, grid: AutoGrid) -> tuple[torch.Tensor, Placement]:
    """The image resized into its box on its own canvas; the padding is filled by the model."""
    placed = place(img.height, img.width, grid.tile, grid.max_tiles)
    canvas = torch.zeros(3, placed.rows * grid.tile, placed.cols * grid.tile, dtype=torch.uint8)
    canvas[:, placed.box[0], placed.box[1]] = to_canvas(img, (placed.height, placed.width))
    return canvas, placed


def _place_mask(mask: np.ndarray, placed: Placement, tile: int) -> torch.Tensor:
    out = torch.zeros(placed.rows * tile, placed.cols * tile, dtype=torch.bool)
    out[placed.box[0], placed.box[1]] = resize_mask(mask, (placed.height, placed.width))
    return out


def placements(batch: dict) -> list[Placement] | None:
    """The placements an AutoGrid batch carries (None for the fixed canvas)."""
    if "placement" not in batch:
        return None
    return [Placement(*(int(v) for v in row)) for row in batch["placement"]]


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


@dataclass(frozen=True)
class Item:
    """One row of a meta.json index, with paths resolved against the dataset root."""

    image: Path
    masks: tuple[Path, ...]  # empty: no mask; several: their union
    cls_name: str
    specie_name: str
    anomaly: int
    mask_threshold: float = 0  # a mask pixel above this is anomalous (about 127 for JPEG masks)


def read_meta(root: Path, split: str = "test", classes: list[str] | None = None) -> dict[str, list[Item]]:
    """Items of ``root/meta.json`` for ``split``, by class, validated (docs/method.md §8)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset root not found: {root}")
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"{meta_path} not found; index the dataset first with the generator for its layout in "
                        f"generate_dataset_json/ (see the README's Datasets section)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{meta_path} is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get(split), dict):
        raise UserError(f"{meta_path} has no '{split}' section of the form {{class: [item, ...]}}")
    section = meta[split]
    wanted = classes or sorted(section)
    unknown = [c for c in wanted if c not in section]
    if unknown:
        raise UserError(f"{meta_path}: classes {unknown} are not in its '{split}' section "
                        f"(it has {sorted(section)})")
    result: dict[str, list[Item]] = {}
    for cls in wanted:
        rows = section[cls]
        if not isinstance(rows, list) or not rows:
            raise UserError(f"{meta_path}: class '{cls}' of '{split}' has no items")
        result[cls] = [_item(root, meta_path, split, cls, i, row) for i, row in enumerate(rows)]
    _check_files(meta_path, split, result)
    return result


def _check_files(meta_path: Path, split: str, by_class: dict[str, list[Item]]) -> None:
    """Fail before any work starts when a listed image or mask does not exist."""
    for cls, items in by_class.items():
        for i, item in enumerate(items):
            for path, what in ((item.image, "image"), *((mask, "mask") for mask in item.masks)):
                if not path.is_file():
                    raise UserError(f"{what} not found: {path} (listed in {meta_path} as {split}/{cls}[{i}])")


def _item(root: Path, meta_path: Path, split: str, cls: str, index: int, row: object) -> Item:
    where = f"{meta_path}: {split}/{cls}[{index}]"
    if not isinstance(row, dict) or any(k not in row for k in ITEM_KEYS):
        raise UserError(f"{where} is not an item with keys {', '.join(ITEM_KEYS)}: {str(row)[:120]}")
    if row["anomaly"] not in (0, 1, True, False):
        raise UserError(f"{where}: 'anomaly' must be 0 or 1, got {row['anomaly']!r}")
    if not isinstance(row["img_path"], str) or not row["img_path"]:
        raise UserError(f"{where}: 'img_path' must be a non-empty path")
    masks = row["mask_path"]
    if isinstance(masks, str):
        masks = [masks] if masks else []
    if not isinstance(masks, list) or not all(isinstance(m, str) and m for m in masks):
        raise UserError(f"{where}: 'mask_path' must be a path, a list of paths (read as their union) or '' for none")
    threshold = row.get("mask_threshold", 0)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold < 0:
        raise UserError(f"{where}: 'mask_threshold' must be a number >= 0 (a mask pixel above it is anomalous), "
                        f"got {threshold!r}")
    return Item(image=root / row["img_path"], masks=tuple(root / m for m in masks), cls_name=str(row["cls_name"]),
                specie_name=str(row["specie_name"]), anomaly=int(row["anomaly"]), mask_threshold=threshold)


def has_masks(items: list[Item]) -> bool:
    """True when every anomalous item has a mask (pixel metrics and training need them)."""
    return all(item.masks for item in items if item.anomaly)


class CanvasDataset(Dataset):
    """Items as model-ready canvases: uint8 (3, T, T) image, bool (T, T) mask, label.

    Decoding and resizing happen here, in DataLoader workers; everything after
    runs batched on the device. ``canvas`` is T (the fixed T×T canvas) or an
    ``AutoGrid``, whose samples carry their ``placement`` and whose masks are
    at the image's own size with ``native_masks`` (for metrics), else placed on
    the canvas (for training). With ``regions`` each sample also carries its
    mask's ``region_sizes`` (int32) and ``regions`` count, the mask-only part
    of the PRO metric, computed here beside the mask.
    """

    def __init__(self, items: list[Item], canvas: int | AutoGrid, with_masks: bool = True,
                 bit_depth: int | None = None, regions: bool = False, native_masks: bool = False) -> None:
        self.items = items
        self.canvas = canvas
        self.with_masks = with_masks
        self.bit_depth = bit_depth
        self.regions = regions and with_masks
        self.native_masks = native_masks and isinstance(canvas, AutoGrid)

    def __len__(self) -> int:
        return len(self.items)

    def describe(self, index: int) -> str:
        return str(self.items[index].image)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        img = load_rgb(item.image, self.bit_depth)
        sample = {"label": item.anomaly, "index": index, "size": torch.tensor([img.height, img.width])}
        placed = None
        if isinstance(self.canvas, AutoGrid):
            sample["image"], placed = _placed(img, self.canvas)
            sample["placement"] = torch.tensor(astuple(placed))
        else:
            sample["image"] = to_canvas(img, self.canvas)
        if self.with_masks:
            if item.masks:
                mask = load_mask(item.masks, item.mask_threshold)
                if mask.shape != (img.height, img.width):
                    raise UserError(f"mask {item.masks[0]} is {mask.shape[1]}x{mask.shape[0]} but its image "
                                    f"{item.image} is {img.width}x{img.height}")
            else:
                mask = np.zeros((img.height, img.width), dtype=bool)
            if self.native_masks:
                sample["mask"] = torch.from_numpy(mask)
            elif placed is not None:
                sample["mask"] = _place_mask(mask, placed, self.canvas.tile)
            else:
                sample["mask"] = resize_mask(mask, self.canvas)
            if self.regions:
                sizes, count = region_sizes(sample["mask"].numpy())
                sample["region_sizes"], sample["regions"] = torch.from_numpy(sizes), count
        return sample


class ImageDataset(Dataset):
    """Images from paths, PIL images or arrays as canvases (uint8 (3, T, T), or with an
    ``AutoGrid`` their own grid's canvas and ``placement``), index, original size.

    With ``skip_errors`` an unreadable image does not stop the run: its sample
    carries the message in ``error`` (empty for good ones) and a blank canvas.
    """

    def __init__(self, sources: list[ImageSource], canvas: int | AutoGrid, bit_depth: int | None = None,
                 skip_errors: bool = False) -> None:
        self.sources = sources
        self.canvas = canvas
        self.bit_depth = bit_depth
        self.skip_errors = skip_errors

    def __len__(self) -> int:
        return len(self.sources)

    def describe(self, index: int) -> str:
        source = self.sources[index]
        return str(source) if isinstance(source, (str, Path)) else f"image {index} of the batch"

    def __getitem__(self, index: int) -> dict:
        try:
            img = image_from_source(self.sources[index], self.bit_depth)
        except UserError as exc:
            if not self.skip_errors:
                raise
            blank = (self.canvas, self.canvas) if isinstance(self.canvas, int) else (self.canvas.tile,) * 2
            return {"image": torch.zeros(3, *blank, dtype=torch.uint8), "index": index,
                    "size": torch.tensor([0, 0]), "error": str(exc)}
        sample = {"index": index, "size": torch.tensor([img.height, img.width])}
        if isinstance(self.canvas, AutoGrid):
            sample["image"], placed = _placed(img, self.canvas)
            sample["placement"] = torch.tensor(astuple(placed))
        else:
            sample["image"] = to_canvas(img, self.canvas)
        return {**sample, "error": ""} if self.skip_errors else sample


def worker_count(num_workers: int | str, images: int) -> int:
    """DataLoader workers: a count as given; ``auto`` starts none for small jobs, where worker
    start-up costs more than it saves, and up to 4 for large ones."""
    if num_workers != "auto":
        return int(num_workers)
    return 0 if images < 64 else min(4, os.cpu_count() or 1)
