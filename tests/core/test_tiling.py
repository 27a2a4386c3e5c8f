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


def test_tiles_that_cut_the_canvas_are_cropped_and_stitched_as_slices():
    """On a partition (every auto grid) crop and stitch are reshapes: the same tiles, in the
    same order, as slicing each box by hand."""
    grid = TileGrid(14, 21, 7, rows=2, cols=3)
    assert grid.partitions and not TileGrid.square(10, 6).partitions
    canvas = torch.arange(2 * 3 * 14 * 21.0).view(2, 3, 14, 21)
    tiles = crop(canvas, grid)
    by_hand = torch.stack([canvas[:, :, y:y + 7, x:x + 7] for y, x in grid.boxes], dim=1).flatten(0, 1)
    assert torch.equal(tiles, by_hand)
    assert torch.equal(stitch(tiles, grid), canvas)


def box_layout(boxes, tiles=TileGrid(28, 42, 14, rows=2, cols=3), global_size=(14, 21)):
    from dhrclip.core.tiling import Layout
    return Layout(tiles, global_size, torch.tensor(boxes))


def test_tokens_inside_are_those_whose_centre_lies_in_the_box_by_hand():
    layout = box_layout([[3, 5, 20, 30]])  # rows 3..22, cols 5..34 of a 28×42 canvas
    # the global grid of 4×6 tokens spans the canvas: centres at 3.5, 10.5, 17.5, 24.5 (rows)
    # and 3.5, 10.5, ..., 38.5 (cols); tiles of 14 px with 2×2 tokens: centres 3.5 and 10.5 from each origin
    inside_g, inside_t = layout.tokens_inside((4, 6), (2, 2), images=1)
    rows_g, cols_g = [True, True, True, False], [False, True, True, True, True, False]
    assert inside_g.view(4, 6).tolist() == [[r and c for c in cols_g] for r in rows_g]
    rows_t = {0: [True, True], 14: [True, False]}  # centres 3.5, 10.5 | 17.5, 24.5 against rows 3..22
    cols_t = {0: [False, True], 14: [True, True], 28: [True, False]}  # 3.5, 10.5 | 17.5, 24.5 | 31.5, 38.5
    want = [[rows_t[y][i] and cols_t[x][j] for i in range(2) for j in range(2)]
            for y in (0, 14) for x in (0, 14, 28)]
    assert inside_t.tolist() == want


def test_padding_token_values_never_reach_a_pixel_of_the_box():
    """Whatever the padding tokens hold, the combined map inside each image's box is the same:
    they take their nearest image token's value before anything is upsampled."""
    from dhrclip.core.maps import combine_views

    layout = box_layout([[3, 5, 20, 30], [0, 9, 28, 15]])
    g = torch.rand(2, 2, 4, 6, generator=torch.Generator().manual_seed(0))
    t = torch.rand(12, 2, 2, 2, generator=torch.Generator().manual_seed(1))
    inside_g, inside_t = layout.tokens_inside((4, 6), (2, 2), images=2)
    noisy_g = torch.where(inside_g.view(2, 1, 4, 6), g, torch.randn_like(g) * 100)
    noisy_t = torch.where(inside_t.view(12, 1, 2, 2), t, torch.randn_like(t) * 100)
    maps = [combine_views(*layout.fill_padding(a, b, (4, 6), (2, 2)), layout.tiles, layout.global_size, 0.5)
            for a, b in ((g, t), (noisy_g, noisy_t))]
    box = layout.pixels_inside().expand_as(maps[0])
    assert torch.equal(maps[0][box], maps[1][box])
    assert not torch.equal(combine_views(g, t, layout.tiles, layout.global_size, 0.5)[box],
                           combine_views(noisy_g, noisy_t, layout.tiles, layout.global_size, 0.5)[box])  # unfilled


def test_an_image_thinner_than_a_token_takes_the_token_at_its_centre():
    from dhrclip.core.tiling import TokenAxis

    axis = TokenAxis.of(torch.tensor([8]), torch.tensor([2]), torch.tensor([0]), 7.0, 4)  # box 8..9: no centre
    assert not axis.inside.any() and axis.nearest.tolist() == [[1, 1, 1, 1]]
