"""The tile grid an image is seen through (docs/method.md §2): one type, two strategies.

A ``Grid`` decides, for an image of a given size, its canvas, where the image sits on it
(its ``Placement``) and which tiles the canvas is cut into (a ``TileGrid``):

- ``FixedGrid``, the published method: every image squashed to one T×T canvas, cut into
  g×g tiles of P pixels;
- ``AutoGrid``: each image on its own rows × cols grid of P-pixel tiles at its own aspect
  ratio, the rest of the canvas padding.

Everything downstream (datasets, the network, inference, metrics, training, the few-shot
bank, the artifacts) works on placements and never asks which strategy made them. This
module is pure arithmetic, without torch, so the command line and the ONNX runtime can
place images too.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import astuple, dataclass
from functools import cached_property
from typing import Any, ClassVar

from ..config import AUTO_GRID, DEFAULT_MAX_TILES, FIXED_GRID, GRID_MODES, ModelConfig
from ..errors import UserError


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

    @property
    def partitions(self) -> bool:
        """Whether the tiles cut the canvas exactly, side by side (always on the auto grid; on the
        fixed grid when g·P = T), so that tiling is a reshape."""
        return bool(self.rows * self.tile == self.height and self.cols * self.tile == self.width)


@dataclass(frozen=True)
class Placement:
    """Where an image sits on its canvas: resized (aspect kept by ``AutoGrid``, squashed by
    ``FixedGrid``) into the box (top, left, height, width) of the canvas of ``tiles``; the rest
    of the canvas is padding, which never reaches a map."""

    tiles: TileGrid
    top: int
    left: int
    height: int
    width: int

    FIELDS: ClassVar[int] = 9  # integers in ``to_tuple``

    @property
    def rows(self) -> int:
        return self.tiles.rows

    @property
    def cols(self) -> int:
        return self.tiles.cols

    @property
    def box(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)

    @property
    def fills_canvas(self) -> bool:
        """Whether the image covers its whole canvas (no padding)."""
        return (self.top, self.left, self.height, self.width) == (0, 0, *self.tiles.size)

    def to_tuple(self) -> tuple[int, ...]:
        """Plain integers, to travel in a batch."""
        return (*astuple(self.tiles), self.top, self.left, self.height, self.width)

    @classmethod
    def from_tuple(cls, values: tuple[int, ...]) -> Placement:
        height, width, tile, rows, cols, top, left, h, w = (int(v) for v in values)
        return cls(TileGrid(height, width, tile, rows, cols), top, left, h, w)


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


def place(height: int, width: int, tile: int, max_tiles: int) -> Placement:
    """The grid of ``choose_grid`` and the image's box on its canvas, aspect kept, centred."""
    rows, cols = choose_grid(height, width, tile, max_tiles)
    scale = min(cols * tile / width, rows * tile / height)
    h = min(rows * tile, max(1, round(height * scale)))
    w = min(cols * tile, max(1, round(width * scale)))
    return Placement(TileGrid(rows * tile, cols * tile, tile, rows, cols), (rows * tile - h) // 2,
                     (cols * tile - w) // 2, h, w)


def global_view_size(height: int, width: int, image_size: int, patch: int) -> tuple[int, int]:
    """The global view of a height × width canvas: S × S when square (the fixed method), else the
    canvas's aspect ratio at about S² pixels, in whole patches."""
    if height == width:
        return image_size, image_size
    scale = image_size / (height * width) ** 0.5
    return (max(1, round(height * scale / patch)) * patch, max(1, round(width * scale / patch)) * patch)


class Grid(ABC):
    """How images are placed on canvases and cut into tiles; built once from the settings by
    ``grid_for``."""

    mode: ClassVar[str]
    # model settings that play no part in what this grid computes
    unused_model_fields: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def place(self, height: int, width: int) -> Placement:
        """The canvas of a height × width image and where the image sits on it."""

    @property
    @abstractmethod
    def uniform(self) -> bool:
        """Whether every image gets the same canvas (so any images batch together, and an
        image's size need not be read before it is decoded)."""

    @abstractmethod
    def scored_size(self, placement: Placement, height: int, width: int) -> tuple[int, int]:
        """Where maps meet masks in the metrics: the (height, width) masks are resized to."""

    @abstractmethod
    def record(self) -> dict[str, Any]:
        """What artifacts (threshold files, banks, exports) record of the grid."""

    def describe(self) -> str:
        return describe_record(self.record())

    def matches(self, record: Mapping[str, Any]) -> bool:
        """Whether ``record`` (an artifact's) describes a grid that gives this grid's maps."""
        return normalized_record(record) == self.record()


@dataclass(frozen=True)
class FixedGrid(Grid):
    """The published method: a ``canvas``² canvas cut into ``per_side``² tiles of ``tile`` pixels;
    masks are scored on the canvas, so every image weighs ``canvas``² pixels."""

    canvas: int
    tile: int
    per_side: int = 2
    mode: ClassVar[str] = FIXED_GRID

    def __post_init__(self) -> None:
        self.tiles  # noqa: B018 - a geometry with gaps is refused when the grid is made

    @cached_property
    def tiles(self) -> TileGrid:
        return TileGrid.square(self.canvas, self.tile, self.per_side)

    def place(self, height: int = 0, width: int = 0) -> Placement:
        return Placement(self.tiles, 0, 0, self.canvas, self.canvas)

    @property
    def uniform(self) -> bool:
        return True

    def scored_size(self, placement: Placement, height: int, width: int) -> tuple[int, int]:
        return placement.height, placement.width

    def record(self) -> dict[str, Any]:
        return {"mode": FIXED_GRID}


@dataclass(frozen=True)
class AutoGrid(Grid):
    """A grid per image (``choose_grid``, at most ``max_tiles`` tiles of ``tile`` pixels) with the
    image placed at its own aspect ratio; masks are scored at the image's own size."""

    tile: int
    max_tiles: int = DEFAULT_MAX_TILES
    mode: ClassVar[str] = AUTO_GRID
    unused_model_fields: ClassVar[tuple[str, ...]] = ("target_image_size", "tiles_per_side")

    def __post_init__(self) -> None:
        if self.max_tiles < 1:
            raise UserError(f"max_tiles must be at least 1, got {self.max_tiles}", field="max_tiles")

    def place(self, height: int, width: int) -> Placement:
        return place(height, width, self.tile, self.max_tiles)

    @property
    def uniform(self) -> bool:
        return False

    def scored_size(self, placement: Placement, height: int, width: int) -> tuple[int, int]:
        return height, width

    def record(self) -> dict[str, Any]:
        return {"mode": AUTO_GRID, "max_tiles": self.max_tiles}


def grid_for(mode: str, max_tiles: int, config: ModelConfig) -> Grid:
    """The grid of a run on a model of ``config``: ``mode`` "fixed" (the T×T canvas with g×g tiles
    of P) or "auto" (a grid of P-pixel tiles per image, at most ``max_tiles``)."""
    if mode == FIXED_GRID:
        return FixedGrid(config.target_image_size, config.patch_image_size, config.tiles_per_side)
    if mode == AUTO_GRID:
        return AutoGrid(config.patch_image_size, max_tiles)
    raise UserError(f"grid must be one of {', '.join(GRID_MODES)}, got {mode!r}", field="grid")


def normalized_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded grid in today's form: the fixed grid's records of earlier releases carried a
    ``max_tiles`` that plays no part in it."""
    if record.get("mode") == FIXED_GRID:
        return {"mode": FIXED_GRID}
    return dict(record)


def unused_model_fields(record: Mapping[str, Any]) -> tuple[str, ...]:
    """The model settings that play no part in what the recorded grid computes."""
    return AutoGrid.unused_model_fields if record.get("mode") == AUTO_GRID else FixedGrid.unused_model_fields


def describe_record(record: Mapping[str, Any]) -> str:
    """A recorded grid in words, as messages name it."""
    if record.get("mode") == AUTO_GRID:
        return f"grid auto (max_tiles {record.get('max_tiles')})"
    return f"grid {record.get('mode')}"
