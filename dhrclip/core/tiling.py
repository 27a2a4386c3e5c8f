"""Dynamic high-resolution views: the grid an image gets, where the tiles sit on the canvas
(docs/method.md §2), and how per-tile maps are stitched back (docs/method.md §5 step 3)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from ..errors import UserError


GRID_MODES = ("fixed", "auto")


def _spread(length: int, tile: int, count: int) -> tuple[int, ...]:
    """Offsets of ``count`` tiles along an axis of ``length``: evenly from 0 to length - tile, rounded."""
    if count == 1:
        return (0,)
    return tuple(round(i * (length - tile) / (count - 1)) for i in range(count))


@dataclass(frozen=True)
class TileGrid:
    """``rows`` × ``cols`` square tiles of ``tile`` pixels on a ``height`` × ``width`` canvas.

    Offsets along each axis are spread evenly from 0 to ``length - tile`` and
    rounded to whole pixels, so tiles always lie inside the canvas (unlike the
    reference, docs/method.md §9). Overlapping tiles are allowed; gaps are not.
    """

    height: int
    width: int
    tile: int
    rows: int = 2
    cols: int = 2

    @classmethod
    def square(cls, canvas: int, tile: int, per_side: int = 2) -> TileGrid:
        """The fixed grid: ``per_side``² tiles on a ``canvas``² image."""
        return cls(canvas, canvas, tile, per_side, per_side)

    def __post_init__(self) -> None:
        if min(self.rows, self.cols) < 1:
            raise UserError(f"tiles_per_side must be at least 1, got {min(self.rows, self.cols)}",
                            field="tiles_per_side")
        for length, count in ((self.height, self.rows), (self.width, self.cols)):
            if self.tile > length:
                raise UserError(
                    f"tile size patch_image_size {self.tile} is larger than the canvas "
                    f"target_image_size {length}; use a tile no larger than the canvas", field="patch_image_size")
            if count * self.tile < length:
                raise UserError(
                    f"{count} tiles of {self.tile}px leave gaps on a {length}px canvas side; "
                    f"raise patch_image_size to at least {-(-length // count)} "
                    f"or lower target_image_size", field="patch_image_size")

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the canvas."""
        return self.height, self.width

    @cached_property
    def boxes(self) -> tuple[tuple[int, int], ...]:
        """(top, left) of every tile, row by row."""
        return tuple((y, x) for y in _spread(self.height, self.tile, self.rows)
                     for x in _spread(self.width, self.tile, self.cols))

    @property
    def count(self) -> int:
        return self.rows * self.cols

    def coverage(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """How many tiles cover each canvas pixel, shape (height, width)."""
        count = torch.zeros(self.height, self.width, device=device)
        for y, x in self.boxes:
            count[y:y + self.tile, x:x + self.tile] += 1
        return count

    def crop(self, canvas: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B·rows·cols, C, P, P), tiles of one image contiguous, row-major."""
        p = self.tile
        tiles = torch.stack([canvas[:, :, y:y + p, x:x + p] for y, x in self.boxes], dim=1)
        return tiles.flatten(0, 1)

    def stitch(self, tiles: torch.Tensor) -> torch.Tensor:
        """(B·rows·cols, C, P, P) -> (B, C, H, W); where tiles overlap their values are averaged."""
        p = self.tile
        tiles = tiles.unflatten(0, (-1, self.count))
        out = tiles.new_zeros(tiles.shape[0], tiles.shape[2], self.height, self.width)
        for i, (y, x) in enumerate(self.boxes):
            out[:, :, y:y + p, x:x + p] += tiles[:, i]
        return out / self.coverage(tiles.device).to(out.dtype)


def choose_grid(height: int, width: int, tile: int, max_tiles: int) -> tuple[int, int]:
    """The (rows, cols) of at most ``max_tiles`` tiles that keeps the most of a height × width image.

    An image fits a grid at scale s = min(cols·tile / width, rows·tile / height).
    It keeps min(s, 1)²·width·height of its pixels (upscaling earns nothing) and
    wastes the rest of the grid's rows·cols·tile² pixels. The most kept pixels
    win; on a tie, the least waste; then the fewest tiles (docs/method.md §2).
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size {height}x{width} is empty")
    if max_tiles < 1:
        raise UserError(f"max_tiles must be at least 1, got {max_tiles}", field="max_tiles")
    best: tuple[float, float, int] | None = None
    choice = (1, 1)
    for rows in range(1, max_tiles + 1):
        for cols in range(1, max_tiles // rows + 1):
            scale = min(cols * tile / width, rows * tile / height)
            kept = min(scale, 1.0) ** 2 * width * height
            key = (-kept, rows * cols * tile * tile - kept, rows * cols)
            if best is None or key < best:
                best, choice = key, (rows, cols)
    return choice


@dataclass(frozen=True)
class Placement:
    """Where an image sits on its canvas: scaled by ``scale`` (aspect kept) into the box
    (top, left, height, width) of a rows·P × cols·P canvas, the rest padding."""

    rows: int
    cols: int
    top: int
    left: int
    height: int
    width: int

    @property
    def box(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


def place(height: int, width: int, tile: int, max_tiles: int) -> Placement:
    """The grid of ``choose_grid`` and the image's box on its canvas, centred."""
    rows, cols = choose_grid(height, width, tile, max_tiles)
    scale = min(cols * tile / width, rows * tile / height)
    h = min(rows * tile, max(1, round(height * scale)))
    w = min(cols * tile, max(1, round(width * scale)))
    return Placement(rows, cols, (rows * tile - h) // 2, (cols * tile - w) // 2, h, w)


def global_view_size(height: int, width: int, image_size: int, patch: int) -> tuple[int, int]:
    """The global view of a height × width canvas: S × S when square (the fixed method), else the
    canvas's aspect ratio at about S² pixels, in whole patches."""
    if height == width:
        return image_size, image_size
    scale = image_size / (height * width) ** 0.5
    return (max(1, round(height * scale / patch)) * patch, max(1, round(width * scale / patch)) * patch)
