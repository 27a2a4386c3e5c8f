import pytest
import torch

from dhrclip.errors import UserError
from dhrclip.tiling import TileGrid


def test_offsets_two_per_side_span_the_canvas():
    assert TileGrid(448, 224).offsets == (0, 224)
    assert TileGrid(448, 336).offsets == (0, 112)
    assert TileGrid(672, 336, 3).offsets == (0, 168, 336)
    assert TileGrid(224, 224, 1).offsets == (0,)


@pytest.mark.parametrize("canvas,tile,g", [(448, 500, 2), (448, 200, 2), (448, 224, 1)])
def test_invalid_grids_are_user_errors(canvas, tile, g):
    with pytest.raises(UserError):
        TileGrid(canvas, tile, g)


def test_crop_takes_tiles_at_their_offsets():
    grid = TileGrid(10, 6)
    ramp = torch.arange(100.0).view(1, 1, 10, 10)
    tiles = grid.crop(ramp)
    assert tiles.shape == (4, 1, 6, 6)
    assert tiles[0, 0, 0, 0] == 0 and tiles[1, 0, 0, 0] == 4 and tiles[2, 0, 0, 0] == 40 and tiles[3, 0, 0, 0] == 44
    assert torch.equal(tiles[3, 0], ramp[0, 0, 4:, 4:])


def test_stitch_of_crop_restores_a_ramp():
    grid = TileGrid(10, 6)
    ramp = torch.arange(200.0).view(2, 1, 10, 10)
    assert torch.allclose(grid.stitch(grid.crop(ramp)), ramp)


def test_stitch_averages_overlaps_by_hand():
    grid = TileGrid(3, 2)  # tiles at 0 and 1 overlap in the middle row and column
    tiles = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1).expand(4, 1, 2, 2)
    out = grid.stitch(tiles)[0, 0]
    expected = torch.tensor([[1.0, 1.5, 2.0], [2.0, 2.5, 3.0], [3.0, 3.5, 4.0]])
    assert torch.allclose(out, expected)
