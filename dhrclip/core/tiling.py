"""Tiles on tensors: cutting canvases into the tiles of their ``TileGrid``, stitching per-tile maps
back (docs/method.md §2, §5 step 3), and which pixels and tokens of a view lie on the image
rather than on its canvas's padding."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .grid import Placement, TileGrid


def coverage(tiles: TileGrid, device: torch.device | str = "cpu") -> torch.Tensor:
    """How many tiles cover each canvas pixel, shape (height, width)."""
    count = torch.zeros(tiles.height, tiles.width, device=device)
    for y, x in tiles.boxes:
        count[y:y + tiles.tile, x:x + tiles.tile] += 1
    return count


def crop(canvas: torch.Tensor, tiles: TileGrid) -> torch.Tensor:
    """(B, C, H, W) -> (B·rows·cols, C, P, P), tiles of one image contiguous, row-major."""
    p = tiles.tile
    return torch.stack([canvas[:, :, y:y + p, x:x + p] for y, x in tiles.boxes], dim=1).flatten(0, 1)


def stitch(tile_maps: torch.Tensor, tiles: TileGrid) -> torch.Tensor:
    """(B·rows·cols, C, P, P) -> (B, C, H, W); where tiles overlap their values are averaged."""
    p = tiles.tile
    per_image = tile_maps.unflatten(0, (-1, tiles.count))
    out = per_image.new_zeros(per_image.shape[0], per_image.shape[2], tiles.height, tiles.width)
    for i, (y, x) in enumerate(tiles.boxes):
        out[:, :, y:y + p, x:x + p] += per_image[:, i]
    return out / coverage(tiles, tile_maps.device).to(out.dtype)


def shared_tiles(placements: Sequence[Placement]) -> TileGrid:
    """The one tile grid of a batch's placements (a batch holds canvases of one shape)."""
    tiles = placements[0].tiles
    if any(p.tiles != tiles for p in placements):
        raise ValueError("a batch must hold canvases of one tile grid")
    return tiles


def pixels_inside(placements: Sequence[Placement], device: torch.device | str) -> torch.Tensor:
    """(B, 1, H, W) bool: the canvas pixels inside each image's box."""
    tiles = shared_tiles(placements)
    inside = torch.zeros(len(placements), 1, *tiles.size, dtype=torch.bool, device=device)
    for i, placed in enumerate(placements):
        inside[i, :, placed.box[0], placed.box[1]] = True
    return inside


def patch_inside(placement: Placement, view: tuple[int, int] | None, grid: tuple[int, int],
                 origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Which patch tokens of a view have their centre inside the image's box on the canvas: for
    the global view (``view`` its size, covering the canvas) or a tile at ``origin``."""
    rows, cols = grid
    tiles = placement.tiles
    if view is None:  # a tile: patches of tile/grid canvas pixels from its origin
        step_y, step_x = tiles.tile / rows, tiles.tile / cols
    else:
        step_y, step_x = tiles.height / rows, tiles.width / cols
    y = origin[0] + (torch.arange(rows) + 0.5) * step_y
    x = origin[1] + (torch.arange(cols) + 0.5) * step_x
    inside_y = (y >= placement.top) & (y < placement.top + placement.height)
    inside_x = (x >= placement.left) & (x < placement.left + placement.width)
    return (inside_y[:, None] & inside_x[None, :]).flatten()


def tokens_inside(placements: Sequence[Placement], global_size: tuple[int, int], global_grid: tuple[int, int],
                  tile_grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, global patches) and (B·tiles, tile patches) bool: the tokens whose centre lies on the image."""
    tiles = shared_tiles(placements)
    return (torch.stack([patch_inside(p, global_size, global_grid) for p in placements]),
            torch.stack([patch_inside(p, None, tile_grid, origin) for p in placements for origin in tiles.boxes]))
