"""Throughput of test.py's batched path against a naive, reference-style loop, and of training.

Flags are those of train.py/test.py (``--pretrained none`` for random weights)
plus the few below. Prints one JSON line:
{"device", "model", "precision", "config", "test_images_per_s", "naive_test_images_per_s",
 "train_images_per_s_first_epoch", "train_images_per_s_cached"}.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dhrclip.cli import build_model, config_from_args, evaluation_parser, train_parser  # noqa: E402
from dhrclip.data import load_rgb, read_meta, to_canvas  # noqa: E402
from dhrclip.evaluation import predict_items  # noqa: E402
from dhrclip.indexing import mvtec_layout_index, write_meta  # noqa: E402
from dhrclip.maps import TEMPERATURE, token_probabilities  # noqa: E402
from dhrclip.runtime import resolve_device, resolve_precision  # noqa: E402
from dhrclip.synthetic import write_mvtec_dataset  # noqa: E402
from dhrclip.training import train  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def naive_predict(model, items, sigma: float, device: torch.device) -> None:
    """As the reference tests: one image at a time, each view its own fp32 forward,
    maps stitched, smoothed and normalised on the host with NumPy/SciPy."""
    model.eval()
    text = model.text_features().float()
    cfg, tiles = model.config, model.tiles
    t = cfg.target_image_size
    for item in items:
        images = model.normalize(to_canvas(load_rgb(item.image), t)[None].to(device))
        views = [F.interpolate(images, size=(cfg.image_size,) * 2, mode="bicubic", antialias=True)]
        views += list(tiles.crop(images).split(1))
        outs = [model.vision(view) for view in views]
        amap = np.zeros((t, t))
        for layer in range(len(cfg.features_list)):
            maps = []
            for out, size in zip(outs, [cfg.image_size] + [cfg.patch_image_size] * tiles.count):
                probs = token_probabilities(out.tokens[layer], text, out.grid)
                maps.append(F.interpolate(probs, size=(size, size), mode="bilinear").cpu().numpy()[0])
            glob = F.interpolate(torch.from_numpy(maps[0])[None], size=(t, t), mode="bilinear").numpy()[0]
            stitched, count = np.zeros((2, t, t)), np.zeros((t, t))
            for (y, x), m in zip(tiles.boxes, maps[1:]):
                stitched[:, y:y + cfg.patch_image_size, x:x + cfg.patch_image_size] += m
                count[y:y + cfg.patch_image_size, x:x + cfg.patch_image_size] += 1
            mixed = cfg.alpha * glob + (1 - cfg.alpha) * stitched / count
            amap += (mixed[1] + 1 - mixed[0]) / 2
        amap = gaussian_filter(amap, sigma)
        amap = (amap - amap.min()) / max(amap.max() - amap.min(), 1e-12)
        embeddings = [F.normalize(out.embedding.float(), dim=-1) @ text.t() for out in outs]
        logits = cfg.alpha * embeddings[0] + (1 - cfg.alpha) * torch.stack(embeddings[1:]).mean(0)
        float((logits / TEMPERATURE).softmax(-1)[0, 1])


def main() -> None:
    bench = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    bench.add_argument("--images", type=int, default=64, help="synthetic test/train images")
    bench.add_argument("--image_px", type=int, default=512, help="side of the synthetic images on disk")
    bench.add_argument("--naive_images", type=int, default=16, help="images timed in naive mode")
    bench.add_argument("--train_epochs", type=int, default=2, help="first epoch + cached epochs to time")
    bench.add_argument("--work_dir", type=Path, default=None, help="where the synthetic data go (default: a temp dir)")
    own, rest = bench.parse_known_args()
    args = evaluation_parser().parse_args(rest)
    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    work = own.work_dir or Path(tempfile.mkdtemp(prefix="dhrclip_bench_"))

    classes = ["stripes", "disk", "checker", "ring"]
    per_class = max(2, own.images // len(classes))
    root = write_mvtec_dataset(work / "data", classes, n_good=per_class // 2, n_defect=per_class - per_class // 2,
                               n_train=0, size=(own.image_px, own.image_px), seed=0)
    write_meta(root, mvtec_layout_index(root))
    items = [i for v in read_meta(root, "test").values() for i in v]

    model = build_model(args, device)
    predict_items(model, items[:args.batch_size], args, device, dtype, with_masks=False, desc="warm-up")
    synchronize(device)
    started = time.perf_counter()
    predict_items(model, items, args, device, dtype, with_masks=True)
    synchronize(device)
    test_rate = len(items) / (time.perf_counter() - started)

    naive_items = items[:own.naive_images]
    naive_predict(model, naive_items[:1], args.sigma, device)
    synchronize(device)
    started = time.perf_counter()
    naive_predict(model, naive_items, args.sigma, device)
    synchronize(device)
    naive_rate = len(naive_items) / (time.perf_counter() - started)
    del model

    train_args = train_parser().parse_args([*rest, "--train_data_path", str(root), "--save_path",
                                            str(work / "checkpoint"), "--epoch", str(own.train_epochs),
                                            "--save_freq", str(own.train_epochs)])
    history = train(train_args)
    first = history[0]["images"] / history[0]["seconds"]
    cached = [h["images"] / h["seconds"] for h in history[1:]]
    print(json.dumps({
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": args.model,
        "pretrained": args.pretrained,
        "precision": str(dtype).removeprefix("torch."),
        "config": {**config_from_args(args).to_dict(), "batch_size": args.batch_size, "images": len(items),
                   "image_px": own.image_px, "num_workers": args.num_workers},
        "test_images_per_s": round(test_rate, 2),
        "naive_test_images_per_s": round(naive_rate, 2),
        "train_images_per_s_first_epoch": round(first, 2),
        "train_images_per_s_cached": round(float(np.mean(cached)), 2) if cached else None,
    }))


if __name__ == "__main__":
    main()
