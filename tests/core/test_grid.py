import pytest

from dhrclip.core.grid import TileGrid
from dhrclip.errors import UserError


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
    from dhrclip.core.grid import choose_grid

    assert choose_grid(height, width, 336, max_tiles) == want


def test_choose_grid_rule_against_enumeration():
    """The rule of the docstring, enumerated literally over a range of shapes."""
    from dhrclip.core.grid import choose_grid

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
    from dhrclip.core.grid import global_view_size, place

    wide = place(1024, 2448, 336, 9)
    assert (wide.rows, wide.cols) == (2, 4) and (wide.width, wide.left) == (1344, 0)
    assert wide.height == round(1024 * 1344 / 2448) and wide.top == (672 - wide.height) // 2
    assert global_view_size(336, 1008, 336, 14) == (196, 588)    # 1:3 at about 336², whole patches
    assert global_view_size(672, 672, 336, 14) == (336, 336)     # a square canvas: S, as in the fixed grid


def test_the_fixed_grid_places_every_image_on_its_whole_canvas():
    from dhrclip.core.grid import FixedGrid

    grid = FixedGrid(112, 70, 2)
    placed = grid.place(30, 500)
    assert placed.fills_canvas and placed.tiles == TileGrid.square(112, 70, 2) and grid.uniform
    assert grid.scored_size(placed, 30, 500) == (112, 112)  # scored on the canvas, as the paper does
    assert grid.record() == {"mode": "fixed"} and grid.matches({"mode": "fixed", "max_tiles": 4})
    with pytest.raises(UserError, match="leave gaps"):
        FixedGrid(448, 200, 2)


def test_the_auto_grid_places_each_image_at_its_own_aspect_ratio():
    from dhrclip.core.grid import AutoGrid, Placement

    grid = AutoGrid(336, 9)
    placed = grid.place(1024, 2448)
    assert (placed.rows, placed.cols) == (2, 4) and not placed.fills_canvas and not grid.uniform
    assert grid.scored_size(placed, 1024, 2448) == (1024, 2448)  # scored at the image's own size
    assert Placement.from_tuple(placed.to_tuple()) == placed
    assert grid.record() == {"mode": "auto", "max_tiles": 9}
    assert grid.matches({"mode": "auto", "max_tiles": 9}) and not grid.matches({"mode": "auto", "max_tiles": 4})
    assert not grid.matches({"mode": "fixed"}) and grid.describe() == "grid auto (max_tiles 9)"
    assert AutoGrid.unused_model_fields == ("target_image_size", "tiles_per_side")


def test_the_grid_kind_is_asked_in_the_grid_module_alone():
    """Everything but the settings and the grid module works on placements and grid objects: no
    isinstance check on the grid kind, no comparison with the strings "fixed" and "auto"."""
    import re
    from pathlib import Path

    package = Path(__file__).resolve().parents[2] / "dhrclip"
    allowed = {package / "core" / "grid.py", package / "config" / "run.py"}
    kind = re.compile(r"isinstance\([^)]*(FixedGrid|AutoGrid)")
    compared = re.compile(r"""(==|!=|\bin)\s*\(?["'](fixed|auto)["']|["'](fixed|auto)["']\s*(==|!=)""")
    for path in package.rglob("*.py"):
        if path in allowed:
            continue
        text = path.read_text()
        assert not kind.search(text), path
        for line in text.splitlines():
            if "grid" in line:
                assert not compared.search(line), (path, line)
