"""Dynamic high-resolution views: where the tiles sit on the canvas (docs/method.md §2) and
how per-tile maps are stitched back (docs/method.md §5 step 3)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from .errors import UserError


@dataclass(frozen=True)
class TileGrid:
    """``per_side`` × ``per_side`` square tiles of ``tile`` pixels on a ``canvas``² image.

    Offsets along each axis are spread evenly from 0 to ``canvas - tile`` and
    rounded to whole pixels, so tiles always lie inside the canvas (unlike the
    reference, docs/method.md §9). Overlapping tiles are allowed; gaps are not.
    """

    canvas: int
    tile: int
    per_side: int = 2

    def __post_init__(self) -> None:
        if self.per_side < 1:
            raise UserError(f"tiles_per_side must be at least 1, got {self.per_side}", field="tiles_per_side")
        if self.tile > self.canvas:
            raise UserError(
                f"tile size patch_image_size {self.tile} is larger than the canvas "
                f"target_image_size {self.canvas}; use a tile no larger than the canvas", field="patch_image_size")
        if self.per_side * self.tile < self.canvas:
            raise UserError(
                f"{self.per_side}x{self.per_side} tiles of {self.tile}px leave gaps on a {self.canvas}px canvas; "
                f"raise patch_image_size to at least {-(-self.canvas // self.per_side)} "
                f"or lower target_image_size", field="patch_image_size")

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """Top-left coordinate of each tile along one axis."""
        if self.per_side == 1:
            return (0,)
        span = self.canvas - self.tile
        return tuple(round(i * span / (self.per_side - 1)) for i in range(self.per_side))

    @cached_property
    def boxes(self) -> tuple[tuple[int, int], ...]:
        """(top, left) of every tile, row by row."""
        return tuple((y, x) for y in self.offsets for x in self.offsets)

    @property
    def count(self) -> int:
        return self.per_side * self.per_side

    def coverage(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """How many tiles cover each canvas pixel, shape (canvas, canvas)."""
        count = torch.zeros(self.canvas, self.canvas, device=device)
        for y, x in self.boxes:
            count[y:y + self.tile, x:x + self.tile] += 1
        return count

    def crop(self, canvas: torch.Tensor) -> torch.Tensor:
        """(B, C, T, T) -> (B·g², C, P, P), tiles of one image contiguous, row-major."""
        p = self.tile
        tiles = torch.stack([canvas[:, :, y:y + p, x:x + p] for y, x in self.boxes], dim=1)
        return tiles.flatten(0, 1)

    def stitch(self, tiles: torch.Tensor) -> torch.Tensor:
        """(B·g², C, P, P) -> (B, C, T, T); where tiles overlap their values are averaged."""
        p = self.tile
        tiles = tiles.unflatten(0, (-1, self.count))
        out = tiles.new_zeros(tiles.shape[0], tiles.shape[2], self.canvas, self.canvas)
        for i, (y, x) in enumerate(self.boxes):
            out[:, :, y:y + p, x:x + p] += tiles[:, i]
        return out / self.coverage(tiles.device).to(out.dtype)
