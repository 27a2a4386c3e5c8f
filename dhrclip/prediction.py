"""predict.py: anomaly maps, scores and decisions for your own images, no ground truth needed.

Decision: an image is anomalous when its image score exceeds the image
threshold, or when its anomaly map exceeds the pixel threshold anywhere (a
localised defect is a defect even when the global score misses it); the
outline in each figure is ``map > pixel_threshold``. Thresholds can be given
(``--threshold``, ``--pixel_threshold``), read from a threshold file, or
calibrated from known-good images: each is the ``--calibrate_quantile``
quantile (default 1.0, the maximum) of the good images' scores and of their
maps' per-image maxima, so with the default no known-good image is flagged.
With many calibration images a quantile such as 0.99 tolerates a few
outliers among them. Maps are raw (smoothed, not normalised per image), so
thresholds on them mean the same for every image.
"""
from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from .checkpoint import atomic_write, load_prompts, read_checkpoint, save_json
from .cli import add_model_arguments, build_model, path_arg, plain_config
from .data import Item, load_rgb
from .errors import UserError
from .evaluation import iter_predictions
from .indexing import IMAGE_SUFFIXES
from .runtime import resolve_device, resolve_precision, seed_everything
from .visualize import heatmap_overlay, outline, panels, save_rgb

log = logging.getLogger(__name__)

CSV_FIELDS = ("path", "image_score", "map_max", "decision")


def prediction_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Anomaly maps, scores and decisions for your own images.")
    p.add_argument("--checkpoint_path", type=path_arg, required=True, help="prompt checkpoint file or folder")
    p.add_argument("--input", required=True, help="an image, a folder (searched recursively) or a glob pattern")
    p.add_argument("--save_path", type=path_arg, default=path_arg("./predictions"), help="output folder")
    p.add_argument("--sigma", type=float, default=8, help="Gaussian smoothing of the maps (0: none)")
    p.add_argument("--threshold", type=float, default=None, help="image-score threshold")
    p.add_argument("--pixel_threshold", type=float, default=None, help="map threshold: outline, and 'anomalous' where exceeded")
    p.add_argument("--threshold_file", type=path_arg, default=None, help="a threshold.json written by calibration")
    p.add_argument("--calibrate_on", default=None, help="folder (or glob) of known-good images to set thresholds")
    p.add_argument("--calibrate_quantile", type=float, default=1.0,
                   help="quantile of the good images' scores and map maxima used as thresholds (1.0: their maximum)")
    add_model_arguments(p)
    return p


def collect_images(spec: str) -> tuple[list[Path], Path]:
    """Image files named by a file, a folder (recursive) or a glob, and the folder they share."""
    path = Path(spec).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True)
                       if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not files and not any(ch in spec for ch in "*?["):
            raise UserError(f"--input {spec}: no such file or folder")
    if not files:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found at {spec}")
    base = path if path.is_dir() else Path(os.path.commonpath([f.parent for f in files]))
    return files, base


def _items(files: list[Path]) -> list[Item]:
    return [Item(image=f, mask=None, cls_name="", specie_name="", anomaly=0) for f in files]


def calibrate(model, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    """Thresholds from known-good images (see the module docstring for the rule)."""
    files, _ = collect_images(args.calibrate_on)
    if not 0.0 < args.calibrate_quantile <= 1.0:
        raise UserError(f"--calibrate_quantile must be in (0, 1], got {args.calibrate_quantile}")
    scores, maxima = [], []
    for batch in iter_predictions(model, _items(files), args, device, dtype, False, "none", desc="calibrating"):
        scores.extend(batch.scores.tolist())
        maxima.extend(batch.maps.flatten(1).max(dim=1).values.cpu().tolist())
    q = args.calibrate_quantile
    return {
        "image_threshold": float(np.quantile(scores, q)),
        "pixel_threshold": float(np.quantile(maxima, q)),
        "rule": f"quantile {q} of the known-good images' image scores and per-image map maxima",
        "calibration_images": len(files),
        "calibrate_on": str(args.calibrate_on),
        "good_score_range": [float(min(scores)), float(max(scores))],
        "checkpoint": str(args.checkpoint_path),
        "sigma": args.sigma,
    }


def resolve_thresholds(model, args: argparse.Namespace, device: torch.device, dtype: torch.dtype
                       ) -> tuple[float | None, float | None]:
    """Image and pixel thresholds from the flags, a threshold file, or calibration (saved to threshold.json)."""
    image_t, pixel_t = None, None
    if args.threshold_file is not None:
        try:
            saved = json.loads(Path(args.threshold_file).read_text())
            image_t, pixel_t = float(saved["image_threshold"]), saved.get("pixel_threshold")
        except FileNotFoundError as exc:
            raise UserError(f"--threshold_file {args.threshold_file} not found") from exc
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise UserError(f"--threshold_file {args.threshold_file} is not a threshold.json ({exc})") from exc
    if args.calibrate_on is not None:
        found = calibrate(model, args, device, dtype)
        save_json(Path(args.save_path) / "threshold.json", found)
        log.info("calibrated on %d good images: image threshold %.4f, pixel threshold %.4f (saved to %s)",
                 found["calibration_images"], found["image_threshold"], found["pixel_threshold"],
                 Path(args.save_path) / "threshold.json")
        image_t, pixel_t = found["image_threshold"], found["pixel_threshold"]
    if args.threshold is not None:
        image_t = args.threshold
    if args.pixel_threshold is not None:
        pixel_t = args.pixel_threshold
    return image_t, pixel_t


def _figure(image: np.ndarray, amap: np.ndarray, score: float, pixel_t: float | None) -> np.ndarray:
    span = float(amap.max() - amap.min())
    shown = (amap - amap.min()) / span if span > 0 else np.zeros_like(amap)
    row = [("input", image), (f"score {score:.3f}", heatmap_overlay(image, shown))]
    if pixel_t is not None:
        row.append((f"map > {pixel_t:.3f}", outline(image, amap > pixel_t)))
    return panels(row)


def predict(args: argparse.Namespace) -> list[dict]:
    """Write a figure and a float16 map per image, and predictions.csv/.json for all of them."""
    started = time.perf_counter()
    seed_everything(args.seed)
    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    files, base = collect_images(args.input)
    checkpoint = read_checkpoint(Path(args.checkpoint_path))
    model = build_model(args, device)
    load_prompts(model.prompt_learner, checkpoint)
    out = Path(args.save_path)
    image_t, pixel_t = resolve_thresholds(model, args, device, dtype)

    rows: list[dict] = []
    for batch in iter_predictions(model, _items(files), args, device, dtype, False, "none", desc="predicting"):
        maps = batch.maps.float().cpu().numpy()
        for k, i in enumerate(batch.index):
            source = files[i]
            h, w = (int(v) for v in batch.sizes[k])
            amap = cv2.resize(maps[k], (w, h), interpolation=cv2.INTER_LINEAR)
            relative = source.relative_to(base)
            relative = relative.with_name(relative.name.replace(".", "_"))  # a.png and a.jpg stay apart
            np.save(_ensure_parent(out / "maps" / f"{relative}.npy"), amap.astype(np.float16))
            score, peak = float(batch.scores[k]), float(maps[k].max())
            scale = min(1.0, 1024 / max(h, w))
            shown = cv2.resize(amap, (max(1, round(w * scale)), max(1, round(h * scale))))
            image = np.asarray(load_rgb(source).resize(shown.shape[::-1]), dtype=np.uint8)
            save_rgb(out / "figures" / f"{relative}.png", _figure(image, shown, score, pixel_t))
            rows.append({"path": str(source), "image_score": score, "map_max": peak,
                         "decision": decide(score, peak, image_t, pixel_t)})
    rows.sort(key=lambda r: r["path"])
    _write_table(out, rows, image_t, pixel_t, args)
    anomalous = sum(r["decision"] == "anomalous" for r in rows)
    known = image_t is not None or pixel_t is not None
    summary = f"{len(rows)} images, " + (f"{anomalous} anomalous, " if known else
                                         "no threshold (pass --threshold or --calibrate_on), ")
    print(f"{summary}{time.perf_counter() - started:.1f} s; results in {out}/predictions.csv")
    return rows


def decide(score: float, peak: float, image_t: float | None, pixel_t: float | None) -> str:
    """'anomalous', 'normal', or '' when no threshold is known (see the module docstring)."""
    if image_t is None and pixel_t is None:
        return ""
    flagged = (image_t is not None and score > image_t) or (pixel_t is not None and peak > pixel_t)
    return "anomalous" if flagged else "normal"


def _ensure_parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _write_table(out: Path, rows: list[dict], image_t: float | None, pixel_t: float | None,
                 args: argparse.Namespace) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "predictions.csv", lambda f: f.write(buffer.getvalue().encode()))
    save_json(out / "predictions.json", {"image_threshold": image_t, "pixel_threshold": pixel_t,
                                         "config": plain_config(args), "predictions": rows})
