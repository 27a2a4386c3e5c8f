"""Throughput of test.py's batched path against a naive, reference-style loop, and of training.

Model and runtime flags are those of train.py (``--pretrained none`` for random
weights), plus the few below. Prints one JSON line:
{"device", "model", "precision", "config", "num_workers_used", "torch_threads", "test_images_per_s",
 "naive_test_images_per_s",
 "train_images_per_s_first_epoch", "train_images_per_s_cached"}.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from dhrclip import DHRCLIP, TrainConfig, train
from dhrclip.cli.common import add_model_flags, model_overrides
from dhrclip.cli.flags import add_settings
from dhrclip.config import RunOptions, resolve_model_config
from dhrclip.core.maps import TEMPERATURE, token_probabilities
from dhrclip.core.tiling import crop
from dhrclip.data.canvases import CanvasDataset, Masks, to_canvas, worker_count
from dhrclip.data.images import load_rgb
from dhrclip.data.indexing import mvtec_layout_index, write_meta
from dhrclip.data.meta import read_meta
from dhrclip.data.synthetic import write_mvtec_dataset
from dhrclip.detector.inference import iter_batches


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def naive_predict(model, items, sigma: float, device: torch.device) -> None:
    """As the reference tests: one image at a time, each view its own fp32 forward,
    maps stitched, smoothed and normalised on the host with NumPy/SciPy."""
    model.eval()
    text = model.text_features()
    cfg, tiles = model.config, model.fixed_grid.tiles
    t = cfg.target_image_size
    for item in items:
        images = model.normalize(to_canvas(load_rgb(item.image), t)[None].to(device))
        views = [F.interpolate(images, size=(cfg.image_size,) * 2, mode="bicubic", antialias=True)]
        views += list(crop(images, tiles).split(1))
        outs = [model.vision(view) for view in views]
        amap = np.zeros((t, t))
        for layer in range(len(cfg.features_list)):
            maps = []
            for out, size in zip(outs, [cfg.image_size] + [cfg.patch_image_size] * tiles.count):
                probs = token_probabilities(out.tokens[layer], text, out.grid)
                maps.append(F.interpolate(probs, size=(size, size), mode="bilinear").cpu().numpy()[0])
            # The global map goes grid -> S (above) -> T (here), as the method does.
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


def run_all(model: DHRCLIP, items: list, batch_size: int, num_workers: int) -> None:
    """test.py's inference over ``items``: batches through the one inference path, maps copied to the host."""
    run = RunOptions(batch_size=batch_size, num_workers=num_workers)
    dataset = CanvasDataset(items, model.grid_for(run), run, masks=Masks.ON_CANVAS)
    for batch in iter_batches(model.model, dataset, map_norm="per-image", desc="benchmark"):
        torch.stack(batch.maps).half().cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="synthetic test/train images")
    parser.add_argument("--image_px", type=int, default=512, help="side of the synthetic images on disk")
    parser.add_argument("--naive_images", type=int, default=16, help="images timed in naive mode")
    parser.add_argument("--train_epochs", type=int, default=2, help="first epoch + cached epochs to time")
    parser.add_argument("--work_dir", type=Path, default=None, help="where the synthetic data go (default: a temp dir)")
    add_settings(parser, RunOptions)
    add_model_flags(parser, from_checkpoint=False)
    args = parser.parse_args()
    config = resolve_model_config(model_overrides(args)).config
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="dhrclip_bench_"))

    classes = ["stripes", "disk", "checker", "ring"]
    per_class = max(2, args.images // len(classes))
    root = write_mvtec_dataset(work / "data", classes, n_good=per_class // 2, n_defect=per_class - per_class // 2,
                               n_train=0, size=(args.image_px, args.image_px), seed=0)
    write_meta(root, mvtec_layout_index(root))
    items = [i for v in read_meta(root, "test").values() for i in v]

    model = DHRCLIP.create(config, device=args.device, precision=args.precision)
    device = model.device
    run_all(model, items[:args.batch_size], args.batch_size, args.num_workers)  # warm-up
    synchronize(device)
    started = time.perf_counter()
    run_all(model, items, args.batch_size, args.num_workers)
    synchronize(device)
    test_rate = len(items) / (time.perf_counter() - started)

    naive_items = items[:args.naive_images]
    naive_predict(model.model, naive_items[:1], config.sigma, device)
    synchronize(device)
    started = time.perf_counter()
    naive_predict(model.model, naive_items, config.sigma, device)
    synchronize(device)
    naive_rate = len(naive_items) / (time.perf_counter() - started)

    history = train(TrainConfig(data_path=root, save_path=work / "checkpoint", epochs=args.train_epochs,
                                save_freq=args.train_epochs,
                                run=RunOptions(batch_size=args.batch_size, num_workers=args.num_workers,
                                               seed=args.seed)), model)
    first = history[0]["images"] / history[0]["seconds"]
    cached = [h["images"] / h["seconds"] for h in history[1:]]
    print(json.dumps({
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": config.model,
        "pretrained": config.pretrained,
        "precision": str(model.precision).removeprefix("torch."),
        "config": {**model.config.to_dict(), "batch_size": args.batch_size, "images": len(items),
                   "image_px": args.image_px, "num_workers": args.num_workers},
        "num_workers_used": worker_count(args.num_workers, len(items), device.type == "cuda"),
        "torch_threads": torch.get_num_threads(),
        "test_images_per_s": round(test_rate, 2),
        "naive_test_images_per_s": round(naive_rate, 2),
        "train_images_per_s_first_epoch": round(first, 2),
        "train_images_per_s_cached": round(float(np.mean(cached)), 2) if cached else None,
    }))


if __name__ == "__main__":
    main()
