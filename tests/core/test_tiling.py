"""Tiles on tensors: cropping and stitching."""
import torch

from dhrclip.core.grid import TileGrid
from dhrclip.core.tiling import crop, stitch


def test_crop_takes_tiles_at_their_offsets():
    grid = TileGrid.square(10, 6)
    ramp = torch.arange(100.0).view(1, 1, 10, 10)
    tiles = crop(ramp, grid)
    assert tiles.shape == (4, 1, 6, 6)
    assert tiles[0, 0, 0, 0] == 0 and tiles[1, 0, 0, 0] == 4 and tiles[2, 0, 0, 0] == 40 and tiles[3, 0, 0, 0] == 44
    assert torch.equal(tiles[3, 0], ramp[0, 0, 4:, 4:])


def test_stitch_of_crop_restores_a_ramp():
    grid = TileGrid.square(10, 6)
    ramp = torch.arange(200.0).view(2, 1, 10, 10)
    assert torch.allclose(stitch(crop(ramp, grid), grid), ramp)


def test_stitch_averages_overlaps_by_hand():
    grid = TileGrid.square(3, 2)  # tiles at 0 and 1 overlap in the middle row and column
    tiles = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1).expand(4, 1, 2, 2)
    out = stitch(tiles, grid)[0, 0]
    expected = torch.tensor([[1.0, 1.5, 2.0], [2.0, 2.5, 3.0], [3.0, 3.5, 4.0]])
    assert torch.allclose(out, expected)
