"""Images/s and tiles/s of --grid fixed and --grid auto on a mixed-aspect synthetic set.

Writes images of four shapes (1:3, 3:1, 4:3 and 1:1, at about 0.2 MP) and runs the one inference
path over them with each grid, after one warm-up batch. Prints one JSON line per grid.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _bench_model import add_model_arguments, build_model
from PIL import Image

from dhrclip.config import RunOptions
from dhrclip.data.synthetic import synthetic_image
from dhrclip.detector.inference import iter_predictions

SHAPES = [(256, 768), (768, 256), (384, 512), (448, 448)]  # (height, width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="images per shape")
    parser.add_argument("--max_tiles", type=int, default=9)
    parser.add_argument("--num_workers", type=int, default=2)
    add_model_arguments(parser)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dhrclip_grid_") as work:
        work = Path(work)
        rng = np.random.default_rng(0)
        files = []
        for h, w in SHAPES:
            for i in range(args.images):
                path = work / f"{h}x{w}_{i}.png"
                Image.fromarray(synthetic_image("stripes", h, w, rng)).save(path)
                files.append(path)
        model = build_model(args, work)
        for grid in ("fixed", "auto"):
            run = RunOptions(grid=grid, max_tiles=args.max_tiles, batch_size=args.batch_size,
                             num_workers=args.num_workers)
            tiling = model.grid_for(run)
            list(iter_predictions(model.model, files[:args.batch_size], tiling, replace(run, num_workers=0)))  # warm-up
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
            tiles = 0
            for _, result in iter_predictions(model.model, files, tiling, run):
                tiles += result.grid[0] * result.grid[1]
            seconds = time.perf_counter() - began
            print(json.dumps({"grid": grid, "device": str(model.device), "images": len(files), "tiles": tiles,
                              "images_per_s": round(len(files) / seconds, 2),
                              "tiles_per_s": round(tiles / seconds, 2), "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
