"""Images/s of an exported detector in onnxruntime and OpenVINO (fp32 and int8) against the same
model in PyTorch eager, at batch 1 and 8, on one machine in one run.

For each model (a tiny random CLIP, and ViT-B-16 with random weights, both at S = P = 224 and
T = 448 with 2×2 tiles) the script exports the grid asked for (default: auto, predict.py's), then
runs the same uint8 canvas batches (a 448×448 canvas holding a 448×400 image, so the box pads it)
through every runtime after a warm-up batch. Prints one JSON line per model, runtime and batch
size, and with --markdown a table for docs/benchmarks.md.

With --agreement it measures instead how far the int8 file's maps are from the fp32 file's on a
synthetic test set with masks (for the tiny CLIP, after training its prompts on another synthetic
set, as the demo does): the largest and mean absolute difference of the maps, and both files'
pixel AUROC.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dhrclip import DHRCLIP
from dhrclip.config import ModelConfig, RunOptions
from dhrclip.data.synthetic import save_openai_format, tiny_clip
from dhrclip.deploy.export import export_onnx
from dhrclip.deploy.runtime import OnnxDetector

RUNTIMES = ("pytorch", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8")
LABELS = {"pytorch": "PyTorch eager, fp32", "onnxruntime": "onnxruntime, fp32", "onnxruntime-int8": "onnxruntime, int8",
          "openvino": "OpenVINO, fp32", "openvino-int8": "OpenVINO, int8"}
MODELS = {
    "tiny": dict(model="ViT-B-16", features_list=(2, 4), dpam=3),
    "ViT-B-16": dict(model="ViT-B-16", pretrained="none", features_list=(3, 6, 9, 12), dpam=10),
}


def build(name: str, work: Path) -> DHRCLIP:
    """The benchmark detector: untrained prompts on the named backbone, at S = P = 224, T = 448,
    its random weights drawn from seed 0 so that reruns measure the same model."""
    torch.manual_seed(0)
    settings = dict(MODELS[name])
    if "pretrained" not in settings:
        settings["pretrained"] = str(save_openai_format(tiny_clip(seed=0), work / "tiny.pt"))
    config = ModelConfig(image_size=224, patch_image_size=224, target_image_size=448, depth=3, n_ctx=6, t_n_ctx=2,
                         **settings)
    return DHRCLIP.create(config, device="cpu", precision="fp32")


def runners(model: DHRCLIP, run: RunOptions, work: Path, wanted: list[str]) -> dict[str, Callable]:
    """A function per runtime, from uint8 canvases and their placements to maps and scores."""
    found: dict[str, Callable] = {}
    files = {}
    needed = {name.partition("-")[2] or "fp32" for name in wanted if name != "pytorch"}
    for precision in ("fp32", "int8"):
        if precision in needed:
            began = time.perf_counter()
            files[precision] = export_onnx(model, work / f"{precision}.onnx", precision=precision, run=run)
            print(json.dumps({"export": precision, "seconds": round(time.perf_counter() - began, 1)}), flush=True)
    text = model.model.text_features()
    for name in wanted:
        if name == "pytorch":
            found[name] = lambda canvases, placed: model.model(torch.from_numpy(canvases), placed, text)
            continue
        runtime, _, precision = name.partition("-")
        try:
            detector = OnnxDetector(files[precision or "fp32"], runtime=runtime)
        except Exception as exc:  # a runtime that is not installed: reported, not fatal
            print(json.dumps({"runtime": name, "skipped": str(exc)[:200]}), flush=True)
            continue
        found[name] = lambda canvases, placed, d=detector: d.run(canvases, placed)
    return found


def agreement(name: str, work: Path, run: RunOptions) -> dict:
    """int8 against fp32 on a synthetic test set with masks (the tiny CLIP's prompts trained first)."""
    from sklearn.metrics import roc_auc_score

    from dhrclip import TrainConfig, train
    from dhrclip.data.images import load_mask
    from dhrclip.data.indexing import mvtec_layout_index, write_meta
    from dhrclip.data.meta import read_meta
    from dhrclip.data.synthetic import write_mvtec_dataset

    model = build(name, work)
    if name == "tiny":
        source = write_mvtec_dataset(work / "source", ["stripes", "disk"], n_good=4, n_defect=8, n_train=0,
                                     size=(224, 224), seed=1)
        write_meta(source, mvtec_layout_index(source))
        train(TrainConfig(data_path=source, save_path=work / "ckpt", epochs=3,
                          run=RunOptions(batch_size=8, num_workers=0, device="cpu")), model)
        model = DHRCLIP.from_checkpoint(work / "ckpt", device="cpu", precision="fp32")
    target = write_mvtec_dataset(work / "target", ["checker", "ring"], n_good=6, n_defect=10, n_train=0,
                                 size=(224, 300), seed=2)
    write_meta(target, mvtec_layout_index(target))
    items = [item for rows in read_meta(target).values() for item in rows]
    truth = np.concatenate([(load_mask(i.masks) if i.masks else np.zeros((224, 300), bool)).ravel() for i in items])
    maps = {}
    for precision in ("fp32", "int8"):
        detector = OnnxDetector(export_onnx(model, work / f"{precision}.onnx", precision=precision, run=run))
        maps[precision] = np.concatenate([r.anomaly_map.ravel() for r in detector.predict([i.image for i in items])])
    difference = np.abs(maps["int8"] - maps["fp32"])
    return {"model": name, "grid": run.grid, "images": len(items), "map_range": float(np.ptp(maps["fp32"])),
            "map_max_abs_diff": float(difference.max()), "map_mean_abs_diff": float(difference.mean()),
            "pixel_auroc_fp32": round(100 * roc_auc_score(truth, maps["fp32"]), 2),
            "pixel_auroc_int8": round(100 * roc_auc_score(truth, maps["int8"]), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--images", type=int, default=16, help="images timed per batch size (after a warm-up batch)")
    parser.add_argument("--rounds", type=int, default=3, help="timings per runtime and batch size; the median is "
                                                               "reported")
    parser.add_argument("--grid", default="auto", choices=["auto", "fixed"])
    parser.add_argument("--markdown", action="store_true", help="also print a table for docs/benchmarks.md")
    parser.add_argument("--agreement", action="store_true", help="measure int8 against fp32 instead of speed")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.agreement:
        for name in args.models:
            with tempfile.TemporaryDirectory(prefix="dhrclip_deploy_") as work:
                print(json.dumps(agreement(name, Path(work), RunOptions(grid=args.grid, max_tiles=4))), flush=True)
        return
    rows = []
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix="dhrclip_deploy_") as work:
            model = build(name, Path(work))
            run = RunOptions(grid=args.grid, max_tiles=4)
            grid = model.grid_for(run)
            placed = grid.place(448, 400)
            rng = np.random.default_rng(0)
            functions = runners(model, run, Path(work), args.runtimes)
            batches = {b: rng.integers(0, 256, (b, 3, *placed.tiles.size), dtype=np.uint8) for b in args.batch_sizes}
            speeds: dict[tuple[str, int], list[float]] = {}
            for _ in range(args.rounds):  # runtimes interleaved, so that a busy moment of the machine hits all
                for runtime, fn in functions.items():
                    for batch, canvases in batches.items():
                        placements = [placed] * batch
                        with torch.no_grad():
                            fn(canvases, placements)  # warm-up
                            steps = max(1, args.images // batch)
                            began = time.perf_counter()
                            for _ in range(steps):
                                fn(canvases, placements)
                            seconds = time.perf_counter() - began
                        speeds.setdefault((runtime, batch), []).append(steps * batch / seconds)
            for (runtime, batch), found in speeds.items():
                row = {"model": name, "grid": args.grid, "runtime": runtime, "batch": batch,
                       "images_per_s": round(float(np.median(found)), 2), "rounds": [round(v, 2) for v in found],
                       "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.markdown:
        print("\n| model | runtime | " + " | ".join(f"batch {b} images/s" for b in args.batch_sizes) + " | "
              + " | ".join(f"batch {b} ÷ eager" for b in args.batch_sizes) + " |")
        print("|---|---|" + "---|" * 2 * len(args.batch_sizes))
        for name in args.models:
            speeds = {(r["runtime"], r["batch"]): r["images_per_s"] for r in rows if r["model"] == name}
            for runtime in args.runtimes:
                if (runtime, args.batch_sizes[0]) not in speeds:
                    continue
                ratios = [f"{speeds[runtime, b] / speeds['pytorch', b]:.2f}" if ("pytorch", b) in speeds else ""
                          for b in args.batch_sizes]
                print(f"| {name} | {LABELS[runtime]} | " + " | ".join(str(speeds[runtime, b]) for b in args.batch_sizes)
                      + " | " + " | ".join(ratios) + " |")

if __name__ == "__main__":
    main()
