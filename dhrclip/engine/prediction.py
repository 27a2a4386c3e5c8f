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

A batch run survives bad files: an unreadable image gets a row with its
``error`` and the run goes on (``on_error="stop"`` stops instead). Rows are
appended to predictions.csv as they are produced, so an interrupted run keeps
what it did; predictions.json and the figures follow at the end. A save_path
holding a previous run's outputs (predictions, maps, figures; a threshold.json
only when calibrating would replace it) is refused unless ``overwrite`` is
set, which removes them first; the output folder is never read as input.

Under torchrun each process takes a contiguous share of the inputs (and of
the calibration images), writes its rows to predictions.rankN.csv as it goes
and its own maps and figures; rank 0 then writes predictions.csv and
predictions.json with every input once, in input order.
"""
from __future__ import annotations

import csv
import glob
import io
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ..config import ModelConfig, PredictConfig, is_bank_file
from ..deploy.runtime import OnnxDetector, decide
from ..detector.facade import DHRCLIP
from .distributed import barrier, extreme_across, gather_all, world
from ..errors import UserError
from ..files import atomic_write, read_json, save_json
from ..data.images import load_rgb
from ..data.indexing import IMAGE_SUFFIXES
from ..core.runtime import seed_everything
from .figures import ColorScale, prediction_figure, save_rgb

log = logging.getLogger(__name__)

CSV_FIELDS = ("path", "image_score", "map_max", "decision", "rows", "cols", "error")
OUTPUTS = ("predictions.csv", "predictions.json", "maps", "figures")  # what a run writes, besides threshold.json
FEW_CALIBRATION_IMAGES = 10
FEW_REFERENCE_IMAGES = 4
RANK_ROWS = "predictions.rank{}.csv"  # one process's rows under torchrun, merged at the end


def collect_images(spec: str, exclude: Path | None = None) -> tuple[list[Path], Path]:
    """Image files named by a file, a folder (recursive) or a glob, and the folder they share;
    nothing inside ``exclude`` (the output folder) is taken."""
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
    found = len(files)
    if exclude is not None:
        outside = Path(exclude).resolve()
        files = [f for f in files if not f.resolve().is_relative_to(outside)]
    if not files:
        inside = f" ({found} left out: they are inside the output folder {exclude})" if found else ""
        raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found at {spec}{inside}", field="input")
    base = path if path.is_dir() else Path(os.path.commonpath([f.parent for f in files]))
    return files, base


def calibrate(model: DHRCLIP, spec: str, quantile: float, batch_size: int, num_workers: int | str = 0,
              bit_depth: int | None = None, skip_errors: bool = True, exclude: Path | None = None,
              grid: str = "auto", max_tiles: int = 9) -> dict:
    """Thresholds from known-good images (see the module docstring for the rule), with the
    settings and checkpoint they hold for."""
    files, _ = collect_images(spec, exclude)
    mine = world().shard(len(files), batch_size)
    own = None
    baked = set(model.reference_sources) if model.reference is None else set()
    if baked & {str(f.resolve()) for f in files}:  # a bank inside an exported file cannot leave one out
        raise UserError(f"calibrate_on {spec} shares images with the reference bank inside the exported file, "
                        f"which cannot leave an image out; calibrate on other good images, or with the PyTorch "
                        f"model and reference", field="calibrate_on")
    if model.reference is not None:  # leave-one-out: a reference image is scored without its own tokens
        index = {name: k for k, name in enumerate(model.reference.sources)}
        own = [index.get(str(f.resolve()), -1) for f in files[mine.start:mine.stop]]
        if any(k >= 0 for k in own) and model.reference.images < 2:
            raise UserError("calibrating on the reference image itself needs at least 2 reference images "
                            "(each is scored against the others)", field="calibrate_on")
    scores, maxima = [], []
    for i, result in model.iter_predictions(files[mine.start:mine.stop], batch_size, num_workers, "calibrating",
                                            bit_depth, skip_errors, grid, max_tiles, own):
        if isinstance(result, str):
            log.warning("calibration skips %s: %s", files[mine.start + i], result)
            continue
        scores.append(result.score)
        maxima.append(result.map_max)
    shares = gather_all((scores, maxima))
    scores, maxima = [v for s, _ in shares for v in s], [v for _, m in shares for v in m]
    if not scores:
        raise UserError(f"calibrate_on {spec}: none of its images could be read", field="calibrate_on")
    if len(scores) < FEW_CALIBRATION_IMAGES:
        log.warning("thresholds calibrated on only %d good image(s) are uncertain; %d or more are advised",
                    len(scores), FEW_CALIBRATION_IMAGES)
    return threshold_record(
        model, float(np.quantile(scores, quantile)), float(np.quantile(maxima, quantile)), grid, max_tiles,
        rule=f"quantile {quantile} of the known-good images' image scores and per-image map maxima",
        calibration_images=len(scores), calibrate_on=str(spec),
        good_score_range=[float(min(scores)), float(max(scores))],
        leave_one_out=own is not None and any(k >= 0 for k in own))


def threshold_record(model: DHRCLIP, image_t: float, pixel_t: float | None, grid: str, max_tiles: int,
                     **provenance: object) -> dict:
    """A threshold.json's contents: the thresholds with the settings, checkpoint, grid and reference
    bank they hold for (what ``read_threshold_file`` checks), and ``provenance``, how they were found."""
    return {
        "image_threshold": image_t,
        "pixel_threshold": pixel_t,
        **provenance,
        "checkpoint": str(model.checkpoint) if model.checkpoint else None,
        "checkpoint_fingerprint": model.checkpoint_fingerprint,
        "config": model.config.to_dict(),
        "grid": {"mode": grid, "max_tiles": max_tiles},
        "reference": model.reference_digest,
    }


def table_row(path: str, score: float | None, map_max: float | None, grid: tuple[int, int] | None, error: str,
              image_t: float | None, pixel_t: float | None) -> dict:
    """One row of predictions.csv (``CSV_FIELDS``): an image's score, map maximum, decision at these
    thresholds and tile grid; an image not inspected (``score`` None) has only its ``error``."""
    done = score is not None
    return {"path": path, "image_score": score, "map_max": map_max,
            "decision": decide(score, map_max, image_t, pixel_t) if done else "",
            "rows": grid[0] if grid else None, "cols": grid[1] if grid else None, "error": error}


def csv_text(rows: list[dict]) -> str:
    """predictions.csv with ``rows`` (of ``table_row``) under its header."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def check_threshold_file(saved: dict, model: DHRCLIP, path: Path) -> None:
    """Refuse thresholds calibrated with other settings or another checkpoint, naming the field."""
    if "config" not in saved:
        log.warning("%s records no settings (an earlier release): it cannot be checked against this model", path)
        return
    recorded = ModelConfig.from_dict(saved["config"], where=str(path))
    current = model.config
    name = None if recorded.same_weights(current) else "pretrained"
    name = name or current.first_difference(recorded, ignore=("pretrained", "weights_fingerprint"))
    if name is not None:
        raise UserError(f"this run uses {name}={getattr(current, name)}, but {path} was calibrated with "
                        f"{getattr(recorded, name)}; recalibrate with calibrate_on or use the same setting",
                        field=name)
    if saved.get("checkpoint_fingerprint") != model.checkpoint_fingerprint:
        raise UserError(f"{path} was calibrated for the checkpoint {saved.get('checkpoint')}, not "
                        f"{model.checkpoint}; recalibrate with calibrate_on", field="threshold_file")


def _check_threshold_grid(saved: dict, path: Path, grid: str, max_tiles: int) -> None:
    """Thresholds hold for the grid they were calibrated with: a map seen through other tiles
    has other values."""
    recorded = saved.get("grid")
    if recorded is None:  # calibrated before grids were recorded: on the fixed canvas
        recorded = {"mode": "fixed", "max_tiles": max_tiles}
    if recorded.get("mode") != grid or (grid == "auto" and recorded.get("max_tiles") != max_tiles):
        raise UserError(f"{path} was calibrated with grid {recorded.get('mode')} (max_tiles "
                        f"{recorded.get('max_tiles')}), and this run uses grid {grid} (max_tiles "
                        f"{max_tiles}); use the same grid or recalibrate with calibrate_on", field="grid")


def read_threshold_file(path: Path, model: DHRCLIP | OnnxDetector, grid: str, max_tiles: int
                        ) -> tuple[dict, tuple[float, float | None]]:
    """A threshold.json's contents and its (image, pixel) thresholds, refused unless it was
    calibrated with this model's settings, checkpoint, grid and reference bank."""
    saved = read_json(path, "threshold_file")
    try:
        image_t = float(saved["image_threshold"])
        pixel_t = None if saved.get("pixel_threshold") is None else float(saved["pixel_threshold"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"threshold_file {path} is not a threshold.json ({exc})", field="threshold_file") from exc
    if not all(np.isfinite(v) for v in (image_t, pixel_t) if v is not None):
        raise UserError(f"threshold_file {path} holds a threshold that is not a finite number",
                        field="threshold_file")
    check_threshold_file(saved, model, path)
    _check_threshold_grid(saved, path, grid, max_tiles)
    own = model.reference_digest
    if saved.get("reference") != own:
        calibrated = "with a reference bank" if saved.get("reference") else "without a reference"
        raise UserError(f"{path} was calibrated {calibrated}, and this run uses {'another bank' if own else 'none'}; "
                        f"give the same reference or recalibrate with calibrate_on", field="reference")
    return saved, (image_t, pixel_t)


def resolve_thresholds(model: DHRCLIP | OnnxDetector, config: PredictConfig) -> tuple[float | None, float | None]:
    """Image and pixel thresholds from the settings, a threshold file, or calibration (saved to
    threshold.json); an exported file's own thresholds come first, replaced by any of those."""
    stored = model.thresholds if isinstance(model, OnnxDetector) else {}
    image_t, pixel_t = stored.get("image_threshold"), stored.get("pixel_threshold")
    if config.threshold_file is not None:
        saved, (image_t, pixel_t) = read_threshold_file(config.threshold_file, model, config.grid,
                                                        config.max_tiles)
    if config.calibrate_on is not None:
        found = calibrate(model, config.calibrate_on, config.calibrate_quantile, config.batch_size,
                          config.num_workers, config.bit_depth, config.on_error == "skip", config.save_path,
                          config.grid, config.max_tiles)
        if world().is_main:
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


def check_save_path(config: PredictConfig) -> list[str]:
    """What in ``save_path`` this run would replace: a previous run's outputs (its threshold.json
    only when a calibration would replace it, since a run may read its thresholds from there).
    Refused unless ``overwrite`` is set, and even then when no prediction run wrote them."""
    out = config.save_path
    names = [*OUTPUTS, "threshold.json"] if config.calibrate_on is not None else OUTPUTS
    previous = [name for name in names if (out / name).exists()]
    previous += sorted(p.name for p in out.glob(RANK_ROWS.format("*")))
    if previous and not config.overwrite:
        raise UserError(f"{out} holds a previous run's outputs ({', '.join(previous)}); choose another save_path "
                        f"or set overwrite to replace them", field="overwrite")
    ours = (out / "predictions.csv").is_file() or (out / "predictions.json").is_file()
    if any(name in ("maps", "figures") for name in previous) and not ours:
        raise UserError(f"{out} has maps/ or figures/ that no prediction run wrote (no predictions.csv), and "
                        f"overwrite replaces only a run's outputs; choose another save_path", field="save_path")
    return previous


def predict(model: DHRCLIP | OnnxDetector, config: PredictConfig) -> list[dict]:
    """Write a float16 map per image, predictions.csv/.json for all of them, then a figure per image.
    ``model`` is a detector or an exported ONNX file's runtime (whose stored thresholds apply
    unless others are given).

    Returns the rows in input order (every process gets all of them); a row whose ``error`` is
    set was skipped.
    """
    started = time.perf_counter()
    here = world()
    seed_everything(config.seed)
    out = config.save_path
    files, base = collect_images(config.input, exclude=out)
    previous = check_save_path(config)
    if config.reference is not None:
        model = with_reference(model, config)
    barrier()  # every rank has looked before rank 0 clears anything
    image_t, pixel_t = resolve_thresholds(model, config)  # before clearing: the threshold file may be in `out`
    if here.is_main:
        _remove(out, [name for name in previous if name != "threshold.json"])  # a calibration just replaced it
    barrier()
    out.mkdir(parents=True, exist_ok=True)  # on every machine of the job

    mine = here.shard(len(files), config.batch_size)
    rows: list[tuple[int, dict]] = []
    low, high = np.inf, -np.inf
    with open(out / (RANK_ROWS.format(here.rank) if here.size > 1 else "predictions.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for k, result in model.iter_predictions(files[mine.start:mine.stop], config.batch_size,
                                                config.num_workers, bit_depth=config.bit_depth,
                                                skip_errors=config.on_error == "skip", grid=config.grid,
                                                max_tiles=config.max_tiles):
            source = files[mine.start + k]
            if isinstance(result, str):
                log.warning("skipped %s: %s", source, result)
                row = table_row(str(source), None, None, None, result, image_t, pixel_t)
            else:
                amap = result.anomaly_map
                np.save(_ensure_parent(out / "maps" / _map_name(source, base)), amap.astype(np.float16))
                low, high = min(low, float(amap.min())), max(high, result.map_max)
                row = table_row(str(source), result.score, result.map_max, result.grid, "", image_t, pixel_t)
            writer.writerow(row)
            handle.flush()
            rows.append((mine.start + k, row))
    low, high = extreme_across(low, largest=False), extreme_across(high, largest=True)
    every = [row for _, row in sorted(r for share in gather_all(rows) for r in share)]
    if here.is_main:
        _write_table(out, every, image_t, pixel_t, model, config)
        _remove(out, [RANK_ROWS.format(rank) for rank in range(here.size)] if here.size > 1 else [])
    _write_figures(out, [row for _, row in rows], base,
                   ColorScale.around(low, high, pixel_t) if np.isfinite(low) else None, pixel_t, config)
    barrier()
    done = [r for r in every if not r["error"]]
    anomalous = sum(r["decision"] == "anomalous" for r in done)
    known = image_t is not None or pixel_t is not None
    summary = f"{len(done)} images, " + (f"{anomalous} anomalous, " if known else
                                         "no threshold (give threshold or calibrate_on), ")
    skipped = f"{len(every) - len(done)} skipped (see the error column), " if len(done) < len(every) else ""
    if here.is_main:
        print(f"{summary}{skipped}{time.perf_counter() - started:.1f} s; results in {out}/predictions.csv")
    return every


def with_reference(model: DHRCLIP, config: PredictConfig) -> DHRCLIP:
    """``model`` with the few-shot bank of ``config.reference``: a saved bank, or one built from the
    good images it names (saved to ``save_reference`` when given)."""
    if is_bank_file(config.reference):
        if not Path(config.reference).is_file():
            raise UserError(f"reference {config.reference}: no such file", field="reference")
        return model.with_reference(Path(config.reference), config.grid, config.max_tiles)
    files, _ = collect_images(config.reference, exclude=config.save_path)
    if len(files) < FEW_REFERENCE_IMAGES:
        log.warning("a reference of %d good image(s); %d or more describe a part's normal variation better",
                    len(files), FEW_REFERENCE_IMAGES)
    few = model.with_reference(files, config.grid, config.max_tiles, config.batch_size, config.num_workers)
    log.info("reference bank: %d good images, %d global and %d tile tokens per layer", few.reference.images,
             len(few.reference.global_owner), len(few.reference.tile_owner))
    if config.save_reference is not None and world().is_main:
        few.reference.save(config.save_reference)
        log.info("reference bank saved to %s", config.save_reference)
    return few


def _remove(out: Path, names: list[str]) -> None:
    for name in names:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
        elif (out / name).exists():
            (out / name).unlink()


def _map_name(source: Path, base: Path) -> Path:
    """maps/ and figures/ mirror the input tree; a.png and a.jpg stay apart."""
    return map_file_name(source.relative_to(base))


def map_file_name(relative: Path) -> Path:
    """Where the map of the image at ``relative`` goes under maps/: a.png as a_png.npy."""
    return relative.with_name(relative.name.replace(".", "_") + ".npy")


def _write_figures(out: Path, rows: list[dict], base: Path, run_scale: ColorScale | None, pixel_t: float | None,
                   config: PredictConfig) -> None:
    """One figure per image, drawn once the run's range is known so all share one colour scale."""
    for row in rows:
        if row["error"]:
            continue
        source = Path(row["path"])
        amap = np.load(out / "maps" / _map_name(source, base)).astype(np.float32)
        scale = run_scale if config.figure_scale == "run" else ColorScale.around(float(amap.min()),
                                                                                  float(amap.max()), pixel_t)
        image = np.asarray(load_rgb(source, config.bit_depth), dtype=np.uint8)
        save_rgb(out / "figures" / _map_name(source, base).with_suffix(".png"),
                 prediction_figure(image, amap, scale, source.relative_to(base).as_posix(), row["image_score"],
                                   row["decision"], pixel_t))


def _ensure_parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _write_table(out: Path, rows: list[dict], image_t: float | None, pixel_t: float | None, model: DHRCLIP,
                 config: PredictConfig) -> None:
    """The final predictions.csv (in input order) and predictions.json, each written atomically."""
    atomic_write(out / "predictions.csv", lambda f: f.write(csv_text(rows).encode()))
    save_json(out / "predictions.json", {
        "image_threshold": image_t, "pixel_threshold": pixel_t,
        "checkpoint": str(model.checkpoint) if model.checkpoint else None,
        "config": model.config.to_dict(), "predict_config": config.to_dict(),
        "reference": ({"images": model.reference_sources, "digest": model.reference_digest}
                      if model.reference_digest else None),
        "predictions": rows})
