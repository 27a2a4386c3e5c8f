"""Anomaly maps, scores and decisions for your own images, no ground truth needed.

Decision: an image is anomalous when its image score exceeds the image
threshold, or when its anomaly map exceeds the pixel threshold anywhere (a
localised defect is a defect even when the global score misses it); the
outline in each figure is ``map > pixel_threshold``. Thresholds can be given
(``PredictConfig.threshold``, ``pixel_threshold``), read from a threshold file,
or calibrated from known-good images: each is the ``calibrate_quantile``
quantile (default 1.0, the maximum) of the good images' scores and of their
maps' per-image maxima, so with the default no known-good image is flagged.
With many calibration images a quantile such as 0.99 tolerates a few
outliers among them. Maps are raw (smoothed, not normalised per image), so
thresholds on them mean the same for every image. A threshold file records
the settings and checkpoint it was calibrated with; it is refused for others.
"""
from __future__ import annotations

import csv
import glob
import io
import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np

from .config import ModelConfig, PredictConfig
from .data import load_rgb
from .detector import DHRCLIP
from .errors import UserError
from .files import atomic_write, fingerprint, read_json, save_json
from .indexing import IMAGE_SUFFIXES
from .inference import iter_predictions
from .runtime import seed_everything
from .visualize import heatmap_overlay, outline, panels, save_rgb

log = logging.getLogger(__name__)

CSV_FIELDS = ("path", "image_score", "map_max", "decision")


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
            raise UserError(f"input {spec}: no such file or folder", field="input")
    if not files:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found at {spec}", field="input")
    base = path if path.is_dir() else Path(os.path.commonpath([f.parent for f in files]))
    return files, base


def calibrate(model: DHRCLIP, spec: str, quantile: float, batch_size: int, num_workers: int = 0) -> dict:
    """Thresholds from known-good images (see the module docstring for the rule), with the
    settings and checkpoint they hold for."""
    files, _ = collect_images(spec)
    scores, maxima = [], []
    for _, result in iter_predictions(model.model, files, batch_size, num_workers, desc="calibrating"):
        scores.append(result.score)
        maxima.append(result.map_max)
    return {
        "image_threshold": float(np.quantile(scores, quantile)),
        "pixel_threshold": float(np.quantile(maxima, quantile)),
        "rule": f"quantile {quantile} of the known-good images' image scores and per-image map maxima",
        "calibration_images": len(files),
        "calibrate_on": str(spec),
        "good_score_range": [float(min(scores)), float(max(scores))],
        "checkpoint": str(model.checkpoint) if model.checkpoint else None,
        "checkpoint_fingerprint": fingerprint(model.checkpoint) if model.checkpoint else None,
        "config": model.config.to_dict(),
    }


def check_threshold_file(saved: dict, model: DHRCLIP, path: Path) -> None:
    """Refuse thresholds calibrated with other settings or another checkpoint, naming the field."""
    if "config" not in saved:
        log.warning("%s records no settings (an earlier release): it cannot be checked against this model", path)
        return
    recorded = ModelConfig.from_dict(saved["config"], where=str(path))
    current = model.config
    same_weights = (recorded.weights_fingerprint == current.weights_fingerprint
                    if recorded.weights_fingerprint or current.weights_fingerprint
                    else recorded.pretrained == current.pretrained)
    name = None if same_weights else "pretrained"
    name = name or current.first_difference(recorded, ignore=("pretrained", "weights_fingerprint"))
    if name is not None:
        raise UserError(f"this run uses {name}={getattr(current, name)}, but {path} was calibrated with "
                        f"{getattr(recorded, name)}; recalibrate with calibrate_on or use the same setting",
                        field=name)
    own = fingerprint(model.checkpoint) if model.checkpoint else None
    if saved.get("checkpoint_fingerprint") != own:
        raise UserError(f"{path} was calibrated for the checkpoint {saved.get('checkpoint')}, not "
                        f"{model.checkpoint}; recalibrate with calibrate_on", field="threshold_file")


def resolve_thresholds(model: DHRCLIP, config: PredictConfig) -> tuple[float | None, float | None]:
    """Image and pixel thresholds from the settings, a threshold file, or calibration (saved to threshold.json)."""
    image_t, pixel_t = None, None
    if config.threshold_file is not None:
        saved = read_json(config.threshold_file, "threshold_file")
        try:
            image_t, pixel_t = float(saved["image_threshold"]), saved.get("pixel_threshold")
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"threshold_file {config.threshold_file} is not a threshold.json ({exc})",
                            field="threshold_file") from exc
        check_threshold_file(saved, model, config.threshold_file)
    if config.calibrate_on is not None:
        found = calibrate(model, config.calibrate_on, config.calibrate_quantile, config.batch_size,
                          config.num_workers)
        save_json(config.save_path / "threshold.json", found)
        log.info("calibrated on %d good images: image threshold %.4f, pixel threshold %.4f (saved to %s)",
                 found["calibration_images"], found["image_threshold"], found["pixel_threshold"],
                 config.save_path / "threshold.json")
        image_t, pixel_t = found["image_threshold"], found["pixel_threshold"]
    if config.threshold is not None:
        image_t = config.threshold
    if config.pixel_threshold is not None:
        pixel_t = config.pixel_threshold
    return image_t, pixel_t


def _figure(image: np.ndarray, amap: np.ndarray, score: float, pixel_t: float | None) -> np.ndarray:
    span = float(amap.max() - amap.min())
    shown = (amap - amap.min()) / span if span > 0 else np.zeros_like(amap)
    row = [("input", image), (f"score {score:.3f}", heatmap_overlay(image, shown))]
    if pixel_t is not None:
        row.append((f"map > {pixel_t:.3f}", outline(image, amap > pixel_t)))
    return panels(row)


def predict(model: DHRCLIP, config: PredictConfig) -> list[dict]:
    """Write a figure and a float16 map per image, and predictions.csv/.json for all of them."""
    started = time.perf_counter()
    seed_everything(config.seed)
    files, base = collect_images(config.input)
    out = config.save_path
    image_t, pixel_t = resolve_thresholds(model, config)

    rows: list[dict] = []
    for i, result in iter_predictions(model.model, files, config.batch_size, config.num_workers):
        source = files[i]
        amap = result.anomaly_map
        h, w = amap.shape
        relative = source.relative_to(base)
        relative = relative.with_name(relative.name.replace(".", "_"))  # a.png and a.jpg stay apart
        np.save(_ensure_parent(out / "maps" / f"{relative}.npy"), amap.astype(np.float16))
        scale = min(1.0, 1024 / max(h, w))
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        shown = amap if size == (w, h) else cv2.resize(amap, size)
        image = np.asarray(load_rgb(source).resize(shown.shape[::-1]), dtype=np.uint8)
        save_rgb(out / "figures" / f"{relative}.png", _figure(image, shown, result.score, pixel_t))
        rows.append({"path": str(source), "image_score": result.score, "map_max": result.map_max,
                     "decision": decide(result.score, result.map_max, image_t, pixel_t)})
    rows.sort(key=lambda r: r["path"])
    _write_table(out, rows, image_t, pixel_t, model, config)
    anomalous = sum(r["decision"] == "anomalous" for r in rows)
    known = image_t is not None or pixel_t is not None
    summary = f"{len(rows)} images, " + (f"{anomalous} anomalous, " if known else
                                         "no threshold (give threshold or calibrate_on), ")
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


def _write_table(out: Path, rows: list[dict], image_t: float | None, pixel_t: float | None, model: DHRCLIP,
                 config: PredictConfig) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "predictions.csv", lambda f: f.write(buffer.getvalue().encode()))
    save_json(out / "predictions.json", {
        "image_threshold": image_t, "pixel_threshold": pixel_t,
        "checkpoint": str(model.checkpoint) if model.checkpoint else None,
        "config": model.config.to_dict(), "predict_config": config.to_dict(), "predictions": rows})
