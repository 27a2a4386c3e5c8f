"""Images/s and tiles/s of --grid fixed and --grid auto on a mixed-aspect synthetic set.

Writes images of four shapes (1:3, 3:1, 4:3 and 1:1, at about 0.2 MP) and runs the one inference
path over them with each grid, after one warm-up batch. Prints one JSON line per grid.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dhrclip import DHRCLIP
from dhrclip.config import ModelConfig
from dhrclip.inference import iter_predictions
from dhrclip.synthetic import save_openai_format, synthetic_image, tiny_clip

SHAPES = [(256, 768), (768, 256), (384, 512), (448, 448)]  # (height, width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="images per shape")
    parser.add_argument("--pretrained", default=None, help="weights file (default: a tiny random CLIP)")
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--patch_image_size", type=int, default=224)
    parser.add_argument("--target_image_size", type=int, default=448)
    parser.add_argument("--features_list", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--dpam", type=int, default=3)
    parser.add_argument("--max_tiles", type=int, default=9)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dhrclip_grid_") as work:
        work = Path(work)
        weights = args.pretrained or str(save_openai_format(tiny_clip(seed=0), work / "tiny.pt"))
        rng = np.random.default_rng(0)
        files = []
        for h, w in SHAPES:
            for i in range(args.images):
                path = work / f"{h}x{w}_{i}.png"
                Image.fromarray(synthetic_image("stripes", h, w, rng)).save(path)
                files.append(path)
        config = ModelConfig(model=args.model, pretrained=weights, image_size=args.image_size,
                             patch_image_size=args.patch_image_size, target_image_size=args.target_image_size,
                             features_list=tuple(args.features_list), dpam=args.dpam, depth=3, n_ctx=6, t_n_ctx=2)
        model = DHRCLIP.create(config, device=args.device, precision=args.precision)
        for grid in ("fixed", "auto"):
            list(iter_predictions(model.model, files[:args.batch_size], args.batch_size, 0, grid=grid,
                                  max_tiles=args.max_tiles))  # warm-up
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
            tiles = 0
            for _, result in iter_predictions(model.model, files, args.batch_size, args.num_workers, grid=grid,
                                              max_tiles=args.max_tiles):
                tiles += result.grid[0] * result.grid[1]
            seconds = time.perf_counter() - began
            print(json.dumps({"grid": grid, "device": str(model.device), "images": len(files), "tiles": tiles,
                              "images_per_s": round(len(files) / seconds, 2),
                              "tiles_per_s": round(tiles / seconds, 2), "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
