"""Cost per image of a few-shot reference bank of K good images, against zero-shot.

Builds banks of K = 1, 4 and 16 synthetic good images (448² canvases, 2×2 tiles) and times the one
inference path over the same test images with each, after a warm-up batch. Prints one JSON line per K
(K = 0 is zero-shot).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _bench_model import add_model_arguments, build_model
from PIL import Image

from dhrclip.config import RunOptions
from dhrclip.data.synthetic import synthetic_image
from dhrclip.detector.inference import iter_predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 1, 4, 16])
    parser.add_argument("--images", type=int, default=32, help="test images")
    add_model_arguments(parser)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dhrclip_fewshot_") as work:
        work = Path(work)
        rng = np.random.default_rng(0)
        paths = []
        for i in range(args.images + max(args.shots)):
            path = work / f"{i}.png"
            Image.fromarray(synthetic_image("disk", 448, 448, rng)).save(path)
            paths.append(path)
        tests, goods = paths[:args.images], paths[args.images:]
        model = build_model(args, work)
        for k in args.shots:
            began = time.perf_counter()
            detector = model.with_reference(goods[:k], grid="fixed", batch_size=args.batch_size) if k else model
            build_s = time.perf_counter() - began
            run = RunOptions(batch_size=args.batch_size, num_workers=0)
            grid = detector.grid_for(run)
            list(iter_predictions(detector.model, tests[:args.batch_size], grid, run))  # warm-up
            if detector.device.type == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
            list(iter_predictions(detector.model, tests, grid, run))
            seconds = time.perf_counter() - began
            bank = detector.reference
            tokens = len(bank.global_owner) + len(bank.tile_owner) if bank is not None else 0
            print(json.dumps({"k": k, "device": str(detector.device), "images": len(tests),
                              "bank_tokens_per_layer": tokens, "bank_build_s": round(build_s, 2),
                              "ms_per_image": round(1000 * seconds / len(tests), 1)}))


if __name__ == "__main__":
    main()
