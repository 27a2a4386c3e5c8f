import pytest
import torch

from dhrclip.errors import UserError
from dhrclip.core.tiling import TileGrid


def column_offsets(grid):
    return tuple(x for y, x in grid.boxes if y == 0)


def test_offsets_two_per_side_span_the_canvas():
    assert column_offsets(TileGrid.square(448, 224)) == (0, 224)
    assert column_offsets(TileGrid.square(448, 336)) == (0, 112)
    assert column_offsets(TileGrid.square(672, 336, 3)) == (0, 168, 336)
    assert column_offsets(TileGrid.square(224, 224, 1)) == (0,)
    assert TileGrid(336, 1008, 336, 1, 3).boxes == ((0, 0), (0, 336), (0, 672))


@pytest.mark.parametrize("canvas,tile,g", [(448, 500, 2), (448, 200, 2), (448, 224, 1)])
def test_invalid_grids_are_user_errors(canvas, tile, g):
    with pytest.raises(UserError):
        TileGrid.square(canvas, tile, g)


def test_crop_takes_tiles_at_their_offsets():
    grid = TileGrid.square(10, 6)
    ramp = torch.arange(100.0).view(1, 1, 10, 10)
    tiles = grid.crop(ramp)
    assert tiles.shape == (4, 1, 6, 6)
    assert tiles[0, 0, 0, 0] == 0 and tiles[1, 0, 0, 0] == 4 and tiles[2, 0, 0, 0] == 40 and tiles[3, 0, 0, 0] == 44
    assert torch.equal(tiles[3, 0], ramp[0, 0, 4:, 4:])


def test_stitch_of_crop_restores_a_ramp():
    grid = TileGrid.square(10, 6)
    ramp = torch.arange(200.0).view(2, 1, 10, 10)
    assert torch.allclose(grid.stitch(grid.crop(ramp)), ramp)


def test_stitch_averages_overlaps_by_hand():
    grid = TileGrid.square(3, 2)  # tiles at 0 and 1 overlap in the middle row and column
    tiles = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1).expand(4, 1, 2, 2)
    out = grid.stitch(tiles)[0, 0]
    expected = torch.tensor([[1.0, 1.5, 2.0], [2.0, 2.5, 3.0], [3.0, 3.5, 4.0]])
    assert torch.allclose(out, expected)


@pytest.mark.parametrize("height,width,max_tiles,want", [
    (300, 900, 4, (1, 3)),      # 1:3 fits three tiles exactly at scale 1.12
    (1000, 1000, 4, (2, 2)),
    (1000, 1000, 9, (3, 3)),
    (20, 20, 4, (1, 1)),        # upscaling earns nothing: one tile wastes least
    (100, 1000, 9, (1, 3)),     # a 10:1 strip: 1x3 already keeps every pixel
    (336, 3360, 9, (1, 9)),     # a 10:1 strip at full resolution needs all nine
    (3360, 336, 9, (9, 1)),
])
def test_choose_grid_by_hand(height, width, max_tiles, want):
    from dhrclip.core.tiling import choose_grid

    assert choose_grid(height, width, 336, max_tiles) == want


def test_choose_grid_rule_against_enumeration():
    """The rule of the docstring, enumerated literally over a range of shapes."""
    from dhrclip.core.tiling import choose_grid

    for height in (50, 337, 700, 1024):
        for width in (60, 336, 900, 2448):
            options = []
            for rows in range(1, 7):
                for cols in range(1, 7):
                    if rows * cols <= 6:
                        s = min(cols * 336 / width, rows * 336 / height)
                        kept = min(s, 1) ** 2 * width * height
                        options.append((-kept, rows * cols * 336 ** 2 - kept, rows * cols, (rows, cols)))
            assert choose_grid(height, width, 336, 6) == min(options)[3]


def test_placement_and_global_view_size():
    from dhrclip.core.tiling import global_view_size, place

    wide = place(1024, 2448, 336, 9)
    assert (wide.rows, wide.cols) == (2, 4) and (wide.width, wide.left) == (1344, 0)
    assert wide.height == round(1024 * 1344 / 2448) and wide.top == (672 - wide.height) // 2
    assert global_view_size(336, 1008, 336, 14) == (196, 588)    # 1:3 at about 336², whole patches
    assert global_view_size(672, 672, 336, 14) == (336, 336)     # a square canvas: S, as in the fixed grid
