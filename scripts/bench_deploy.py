"""Images/s of an exported ONNX file in onnxruntime against the same model in PyTorch eager.

Exports the benchmark model (a tiny random CLIP unless --pretrained) at the fixed canvas, then runs
the same uint8 canvas batches through both, after a warm-up batch. Prints one JSON line per runtime.
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

from dhrclip.deploy.export import export_onnx
from dhrclip.deploy.runtime import OnnxDetector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--providers", nargs="+", default=None,
                        help="onnxruntime execution providers (default: CPUExecutionProvider)")
    add_model_arguments(parser)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dhrclip_deploy_") as work:
        work = Path(work)
        model = build_model(args, work)
        path = export_onnx(model, work / "model.onnx")
        onnx_model = OnnxDetector(path, args.providers)
        size = model.config.target_image_size
        rng = np.random.default_rng(0)
        batches = [rng.integers(0, 256, (args.batch_size, 3, size, size), dtype=np.uint8)
                   for _ in range(args.batches + 1)]
        runs = {
            "pytorch": lambda b: model.model(torch.from_numpy(b).to(model.device)),
            "onnxruntime": onnx_model.run,
        }
        for name, run in runs.items():
            with torch.no_grad():
                run(batches[0])  # warm-up
                if model.device.type == "cuda":
                    torch.cuda.synchronize()
                began = time.perf_counter()
                for batch in batches[1:]:
                    run(batch)
                if model.device.type == "cuda":
                    torch.cuda.synchronize()
            seconds = time.perf_counter() - began
            images = args.batches * args.batch_size
            print(json.dumps({"runtime": name, "device": str(model.device) if name == "pytorch" else
                              onnx_model.session.get_providers()[0], "images": images,
                              "images_per_s": round(images / seconds, 2)}))


if __name__ == "__main__":
    main()
