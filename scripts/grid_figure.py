"""Draw the tile grid ``--grid auto`` chooses for an image, over the image itself.

Usage: python scripts/grid_figure.py [--image FILE] [--tile 336] [--max_tiles 9] --output grid.png
Without --image it draws a synthetic 2448×1024 frame (the README's figure). The boxes are the tiles
mapped back to the image's coordinates; the caption gives the grid and the scale.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from dhrclip.core.grid import place
from dhrclip.data.images import load_rgb
from dhrclip.data.synthetic import paint_defect, synthetic_image
from dhrclip.engine.figures import save_rgb

COLOURS = [(255, 200, 0), (0, 200, 255), (255, 80, 200), (120, 255, 120)]


def draw(image: np.ndarray, tile: int, max_tiles: int) -> np.ndarray:
    """The image with its tiles' outlines, scaled to at most 1200 pixels wide, and a caption."""
    height, width = image.shape[:2]
    placed = place(height, width, tile, max_tiles)
    grid = placed.tiles
    scale = placed.width / width  # canvas pixels per image pixel
    shown = min(1.0, 1200 / width)
    out = cv2.resize(image, (round(width * shown), round(height * shown)), interpolation=cv2.INTER_AREA)
    for k, (top, left) in enumerate(grid.boxes):
        y0 = (top - placed.top) / scale * shown
        x0 = (left - placed.left) / scale * shown
        size = tile / scale * shown
        corner0 = (int(max(x0, 0)), int(max(y0, 0)))
        corner1 = (int(min(x0 + size, out.shape[1]) - 1), int(min(y0 + size, out.shape[0]) - 1))
        cv2.rectangle(out, corner0, corner1, COLOURS[k % len(COLOURS)], 3)
    caption = (f"--grid auto: a {width}x{height} image on {placed.rows}x{placed.cols} tiles of {tile} px, "
               f"scale {scale:.3f}, aspect kept")
    bar = np.full((36, out.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, caption, (8, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, out])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=None)
    parser.add_argument("--tile", type=int, default=336, help="P, the tile size")
    parser.add_argument("--max_tiles", type=int, default=9)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    if args.image is not None:
        image = np.asarray(load_rgb(args.image), dtype=np.uint8)
    else:
        rng = np.random.default_rng(0)
        image, _ = paint_defect(synthetic_image("stripes", 1024, 2448, rng), "hole", rng)
    save_rgb(args.output, draw(image, args.tile, args.max_tiles))


if __name__ == "__main__":
    main()
