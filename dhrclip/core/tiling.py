"""Tiles on tensors: cutting canvases into the tiles of their ``TileGrid``, stitching per-tile maps
back (docs/method.md §2, §5 step 3), and where each image lies on its canvas (its box), down to
the view tokens: which lie on the image, and the map values a padding token takes from the image.

Everything here is written on tensors and on the tile grid's numbers alone, so the same code runs
eagerly and traced with symbolic canvas sizes (the ONNX export of the auto grid).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .grid import Placement, TileGrid, global_view_size


def coverage(tiles: TileGrid, device: torch.device | str = "cpu") -> torch.Tensor:
    """How many tiles cover each canvas pixel, shape (height, width)."""
    count = torch.zeros(tiles.height, tiles.width, device=device)
    for y, x in tiles.boxes:
        count[y:y + tiles.tile, x:x + tiles.tile] += 1
    return count


def crop(canvas: torch.Tensor, tiles: TileGrid) -> torch.Tensor:
    """(B, C, H, W) -> (B·rows·cols, C, P, P), tiles of one image contiguous, row-major."""
    p = tiles.tile
    if tiles.partitions:  # the tiles cut the canvas exactly: a reshape
        b, c = canvas.shape[:2]
        return (canvas.reshape(b, c, tiles.rows, p, tiles.cols, p).permute(0, 2, 4, 1, 3, 5)
                .reshape(b * tiles.rows * tiles.cols, c, p, p))
    return torch.stack([canvas[:, :, y:y + p, x:x + p] for y, x in tiles.boxes], dim=1).flatten(0, 1)


def stitch(tile_maps: torch.Tensor, tiles: TileGrid) -> torch.Tensor:
    """(B·rows·cols, C, P, P) -> (B, C, H, W); where tiles overlap their values are averaged."""
    p = tiles.tile
    c = tile_maps.shape[1]
    if tiles.partitions:
        return (tile_maps.reshape(-1, tiles.rows, tiles.cols, c, p, p).permute(0, 3, 1, 4, 2, 5)
                .reshape(-1, c, tiles.height, tiles.width))
    per_image = tile_maps.unflatten(0, (-1, tiles.count))
    out = per_image.new_zeros(per_image.shape[0], c, tiles.height, tiles.width)
    for i, (y, x) in enumerate(tiles.boxes):
        out[:, :, y:y + p, x:x + p] += per_image[:, i]
    return out / coverage(tiles, tile_maps.device).to(out.dtype)


def shared_tiles(placements: Sequence[Placement]) -> TileGrid:
    """The one tile grid of a batch's placements (a batch holds canvases of one shape)."""
    tiles = placements[0].tiles
    if any(p.tiles != tiles for p in placements):
        raise ValueError("a batch must hold canvases of one tile grid")
    return tiles


def tile_origins(tiles: TileGrid, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(top, left) of every tile, row by row, as two (tiles,) tensors."""
    if tiles.partitions:  # broadcast, not repeated: the counts may be symbolic while an export traces
        rows = (torch.arange(tiles.rows, device=device) * tiles.tile)[:, None].expand(tiles.rows, tiles.cols)
        cols = (torch.arange(tiles.cols, device=device) * tiles.tile)[None, :].expand(tiles.rows, tiles.cols)
        return rows.reshape(-1), cols.reshape(-1)
    boxes = torch.tensor(tiles.boxes, device=device).reshape(-1, 2)
    return boxes[:, 0], boxes[:, 1]


@dataclass(frozen=True)
class Layout:
    """A batch of canvases as the network sees it: their tile grid, the global view's size, and
    each image's box (top, left, height, width) on its canvas, or None when every image fills
    its canvas (the fixed grid, or an auto-grid image of the grid's own aspect ratio)."""

    tiles: TileGrid
    global_size: tuple[int, int]
    boxes: torch.Tensor | None = None  # (B, 4) long

    @classmethod
    def of(cls, placements: Sequence[Placement], image_size: int, patch: int,
           device: torch.device | str) -> Layout:
        tiles = shared_tiles(placements)
        size = global_view_size(*tiles.size, image_size, patch)
        if all(p.fills_canvas for p in placements):
            return cls(tiles, size)
        boxes = torch.tensor([(p.top, p.left, p.height, p.width) for p in placements], device=device)
        return cls(tiles, size, boxes)

    def pixels_inside(self) -> torch.Tensor:
        """(B, 1, H, W) bool: the canvas pixels inside each image's box (needs boxes)."""
        assert self.boxes is not None
        height, width = self.tiles.size
        y = torch.arange(height, device=self.boxes.device)
        x = torch.arange(width, device=self.boxes.device)
        top, left, h, w = self.boxes.unbind(dim=1)
        inside_y = (y[None] >= top[:, None]) & (y[None] < (top + h)[:, None])
        inside_x = (x[None] >= left[:, None]) & (x[None] < (left + w)[:, None])
        return (inside_y[:, :, None] & inside_x[:, None, :])[:, None]

    def token_axes(self, grid: tuple[int, int], tile: bool) -> tuple[TokenAxis, TokenAxis]:
        """The rows and columns of the token grid of the global views (``tile`` False; one per
        image) or of the tiles (one per tile of each image), against the images' boxes."""
        assert self.boxes is not None
        top, left, h, w = self.boxes.unbind(dim=1)
        if not tile:
            height, width = self.tiles.size
            zero = torch.zeros_like(top)
            return (TokenAxis.of(top, h, zero, height / grid[0], grid[0]),
                    TokenAxis.of(left, w, zero, width / grid[1], grid[1]))
        origin_y, origin_x = tile_origins(self.tiles, self.boxes.device)
        b, count = self.boxes.shape[0], origin_y.shape[0]

        def per_tile(values: torch.Tensor) -> torch.Tensor:  # each image's value for each of its tiles
            return values[:, None].expand(b, count).reshape(-1)

        def per_image(values: torch.Tensor) -> torch.Tensor:  # each tile's value for each image
            return values[None, :].expand(b, count).reshape(-1)

        return (TokenAxis.of(per_tile(top), per_tile(h), per_image(origin_y), self.tiles.tile / grid[0], grid[0]),
                TokenAxis.of(per_tile(left), per_tile(w), per_image(origin_x), self.tiles.tile / grid[1], grid[1]))

    def tokens_inside(self, global_grid: tuple[int, int], tile_grid: tuple[int, int], images: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, global patches) and (B·tiles, tile patches) bool: the tokens whose centre lies on
        the image (every token when the ``images`` images fill their canvases)."""
        if self.boxes is None:
            return (torch.ones(images, global_grid[0] * global_grid[1], dtype=torch.bool),
                    torch.ones(images * self.tiles.count, tile_grid[0] * tile_grid[1], dtype=torch.bool))
        g_rows, g_cols = self.token_axes(global_grid, tile=False)
        t_rows, t_cols = self.token_axes(tile_grid, tile=True)
        return ((g_rows.inside[:, :, None] & g_cols.inside[:, None, :]).flatten(1),
                (t_rows.inside[:, :, None] & t_cols.inside[:, None, :]).flatten(1))

    def fill_padding(self, global_maps: torch.Tensor, tile_maps: torch.Tensor, global_grid: tuple[int, int],
                     tile_grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token maps (B, C, r, c) of the global views and (B·tiles, C, r', c') of the tiles with
        every padding token taking the value of the nearest token on the image, so that the
        upsampling that follows carries nothing of the padding into the image's box
        (docs/method.md §2). Unchanged when the images fill their canvases."""
        if self.boxes is None:
            return global_maps, tile_maps
        return (_fill(global_maps, *self.token_axes(global_grid, tile=False)),
                _fill(tile_maps, *self.token_axes(tile_grid, tile=True)))


@dataclass(frozen=True)
class TokenAxis:
    """One axis of a batch of token grids against a box: which tokens have their centre inside
    it (``inside``, (N, count) bool) and, for every token, the index of the nearest one that
    does (``nearest``, (N, count) long); where none does, the token nearest the box's centre."""

    inside: torch.Tensor
    nearest: torch.Tensor

    @classmethod
    def of(cls, start: torch.Tensor, length: torch.Tensor, origin: torch.Tensor, step: float,
           count: int) -> TokenAxis:
        """Tokens at ``origin + (i + 0.5)·step`` (canvas pixels) along an axis, ``count`` of them,
        against boxes from ``start`` of ``length`` pixels; all (N,) tensors."""
        index = torch.arange(count, device=start.device)
        centre = origin[:, None] + (index[None] + 0.5) * step
        inside = (centre >= start[:, None]) & (centre < (start + length)[:, None])
        middle = ((start + length / 2 - origin) / step).floor().long().clamp(0, count - 1)
        last = torch.full_like(middle, count - 1)
        any_inside = inside.any(dim=1)
        first = torch.where(any_inside, inside.int().argmax(dim=1), middle)
        final = torch.where(any_inside, last - inside.flip(1).int().argmax(dim=1), middle)
        return cls(inside, torch.minimum(torch.maximum(index[None], first[:, None]), final[:, None]))


def _fill(maps: torch.Tensor, rows: TokenAxis, cols: TokenAxis) -> torch.Tensor:
    """(N, C, r, c) token maps with each token replaced by its nearest token on the image."""
    n, c, r, k = maps.shape
    maps = maps.gather(2, rows.nearest[:, None, :, None].expand(n, c, r, k))
    return maps.gather(3, cols.nearest[:, None, None, :].expand(n, c, r, k))
