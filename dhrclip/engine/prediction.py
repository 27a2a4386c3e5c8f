"""Anomaly maps, scores and decisions for your own images, no ground truth needed.

Decisions follow ``detector.results.decide``; the outline in each figure is
``map > pixel_threshold``. Thresholds can be given (``PredictConfig.threshold``,
``pixel_threshold``), read from a threshold file, or calibrated from known-good
images (``engine.calibration``). Maps are raw (smoothed, not normalised per
image), so thresholds on them mean the same for every image. A threshold file
records the settings, grid, checkpoint and bank it was calibrated with; it is
refused for others.

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
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..config import PredictConfig, is_bank_file
from ..data.images import collect_images, load_rgb
from ..detector.results import CSV_FIELDS, Detector, Thresholds, csv_text, map_file_name, table_row
from ..detector.thresholds import read_threshold_file
from ..errors import UserError
from ..files import atomic_write, remove_temporaries, save_json, save_npy
from .calibration import calibrate
from .distributed import barrier, extreme_across, gather_all, world
from .figures import ColorScale, prediction_figure, save_rgb

if TYPE_CHECKING:
    from ..detector.facade import DHRCLIP

log = logging.getLogger(__name__)

OUTPUTS = ("predictions.csv", "predictions.json", "maps", "figures")  # what a run writes, besides threshold.json
SCRATCH_MAPS = ".maps"  # with no_maps, the maps the figures are drawn from, removed once they are
FEW_REFERENCE_IMAGES = 4
RANK_ROWS = "predictions.rank{}.csv"  # one process's rows under torchrun, merged at the end


def resolve_thresholds(model: Detector, config: PredictConfig) -> Thresholds:
    """Image and pixel thresholds from the settings, a threshold file, or calibration (saved to
    threshold.json); an exported file's own thresholds come first, replaced by any of those."""
    thresholds = model.stored_thresholds
    if config.threshold_file is not None:
        saved = read_threshold_file(config.threshold_file)
        saved.check(model.signature(config.run))
        thresholds = saved.thresholds
    if config.calibrate_on is not None:
        found = calibrate(model, config.calibrate_on, config.run, config.calibrate_quantile,
                          config.on_error == "skip", config.save_path)
        if world().is_main:
            save_json(config.save_path / "threshold.json", found)
        log.info("calibrated on %d good images: image threshold %.4f, pixel threshold %.4f (saved to %s)",
                 found["calibration_images"], found["image_threshold"], found["pixel_threshold"],
                 config.save_path / "threshold.json")
        thresholds = Thresholds(found["image_threshold"], found["pixel_threshold"])
    for name, given, had in (("threshold", config.threshold, thresholds.image),
                             ("pixel_threshold", config.pixel_threshold, thresholds.pixel)):
        if given is not None and had is not None:
            log.info("%s %g replaces the %g of the %s", name, given, had,
                     "calibration" if config.calibrate_on else "threshold file" if config.threshold_file
                     else "exported file")
    return thresholds.replaced(config.threshold, config.pixel_threshold)


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
    bank = config.save_reference
    if bank is not None and bank.exists() and not config.overwrite:
        raise UserError(f"{bank} exists (threshold files calibrated with that bank need it as it is); choose "
                        f"another save_reference or set `overwrite` to replace it", field="save_reference")
    return previous


def predict(model: Detector, config: PredictConfig) -> list[dict]:
    """Write a float16 map per image, predictions.csv/.json for all of them, then a figure per image.
    ``model`` is a detector or an exported ONNX file's runtime (whose stored thresholds apply
    unless others are given).

    Returns the rows in input order (every process gets all of them); a row whose ``error`` is
    set was skipped.
    """
    started = time.perf_counter()
    here = world()
    run = config.run
    if "torch" in sys.modules:  # a PyTorch model; an exported one runs without torch, and draws nothing random
        from ..core.runtime import seed_everything

        seed_everything(run.seed)
    out = config.save_path
    files, base = collect_images(config.input, exclude=out)
    previous = check_save_path(config)
    if config.reference is not None:
        model = with_reference(model, config.reference, config)
    barrier()  # every rank has looked before rank 0 clears anything
    thresholds = resolve_thresholds(model, config)  # before clearing: the threshold file may be in `out`
    if here.is_main:
        _remove(out, [name for name in previous if name != "threshold.json"])  # a calibration just replaced it
        _remove(out, [SCRATCH_MAPS])  # an interrupted run's
        if stale := sum(remove_temporaries(folder, recursive=folder != out) for folder in
                        (out, out / "maps", out / "figures")):
            log.info("removed %d unfinished file(s) that an interrupted run left in %s", stale, out)
    barrier()
    out.mkdir(parents=True, exist_ok=True)  # on every machine of the job
    maps = out / "maps" if not config.no_maps else out / SCRATCH_MAPS if not config.no_figures else None

    mine = here.shard(len(files), run.batch_size)
    rows: list[tuple[int, dict]] = []
    low, high = np.inf, -np.inf
    with open(out / (RANK_ROWS.format(here.rank) if here.size > 1 else "predictions.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for k, result in model.iter_predictions(files[mine.start:mine.stop], run, config.on_error == "skip",
                                                progress=here.is_main):
            source = files[mine.start + k]
            if isinstance(result, str):
                log.warning("skipped %s: %s", source, result)
                row = table_row(str(source), None, result, thresholds)
            else:
                amap = result.anomaly_map
                if maps is not None:
                    save_npy(maps / _map_name(source, base), amap.astype(np.float16))
                low, high = min(low, float(amap.min())), max(high, result.map_max)
                row = table_row(str(source), result.outcome, "", thresholds)
            writer.writerow(row)
            handle.flush()
            rows.append((mine.start + k, row))
    low, high = extreme_across(low, largest=False), extreme_across(high, largest=True)
    every = [row for _, row in sorted(r for share in gather_all(rows) for r in share)]
    if here.is_main:
        _write_table(out, every, thresholds, model, config)
        _remove(out, [RANK_ROWS.format(rank) for rank in range(here.size)] if here.size > 1 else [])
    if maps is not None and not config.no_figures:
        _write_figures(out, maps, [row for _, row in rows], base,
                       ColorScale.around(low, high, thresholds.pixel) if np.isfinite(low) else None, thresholds.pixel,
                       config)
    barrier()
    if here.is_main and config.no_maps:
        _remove(out, [SCRATCH_MAPS])
    done = [r for r in every if not r["error"]]
    anomalous = sum(r["decision"] == "anomalous" for r in done)
    summary = f"{len(done)} images, " + (f"{anomalous} anomalous, " if thresholds.known else
                                         "no threshold set, so no decisions, ")
    skipped = f"{len(every) - len(done)} skipped (see the error column), " if len(done) < len(every) else ""
    if here.is_main:
        print(f"{summary}{skipped}{time.perf_counter() - started:.1f} s; results in {out}/predictions.csv")
    return every


def with_reference(model: Detector, reference: str, config: PredictConfig) -> DHRCLIP:
    """``model`` with the few-shot bank of ``reference``: a saved bank, or one built from the good
    images it names (saved to ``save_reference`` when given)."""
    from ..detector.facade import DHRCLIP

    if not isinstance(model, DHRCLIP):
        raise UserError("reference banks are baked into an exported file at export", field="reference")
    if is_bank_file(reference):
        if not Path(reference).is_file():
            raise UserError(f"reference {reference}: no such file", field="reference")
        return model.with_reference(Path(reference), config.run)
    files, _ = collect_images(reference, config.save_path, "reference")
    if len(files) < FEW_REFERENCE_IMAGES:
        log.warning("a reference of %d good image(s); %d or more describe a part's normal variation better",
                    len(files), FEW_REFERENCE_IMAGES)
    few = model.with_reference(files, config.run)
    log.info("reference bank: %d good images, %d global and %d tile tokens per layer", few.bank.images,
             len(few.bank.global_owner), len(few.bank.tile_owner))
    if config.save_reference is not None and world().is_main:
        remove_temporaries(config.save_reference.parent, config.save_reference.name)
        few.bank.save(config.save_reference)
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


def _write_figures(out: Path, maps: Path, rows: list[dict], base: Path, run_scale: ColorScale | None,
                   pixel_t: float | None, config: PredictConfig) -> None:
    """One figure per image from its map in ``maps``, drawn once the run's range is known so all
    share one colour scale."""
    for row in rows:
        if row["error"]:
            continue
        source = Path(row["path"])
        amap = np.load(maps / _map_name(source, base)).astype(np.float32)
        scale = (run_scale if config.figure_scale == "run" and run_scale is not None
                 else ColorScale.around(float(amap.min()), float(amap.max()), pixel_t))
        image = np.asarray(load_rgb(source, config.run.bit_depth), dtype=np.uint8)
        save_rgb(out / "figures" / _map_name(source, base).with_suffix(".png"),
                 prediction_figure(image, amap, scale, source.relative_to(base).as_posix(), row["image_score"],
                                   row["decision"], pixel_t))


def _write_table(out: Path, rows: list[dict], thresholds: Thresholds, model: Detector,
                 config: PredictConfig) -> None:
    """The final predictions.csv (in input order) and predictions.json, each written atomically."""
    signature = model.signature(config.run)
    atomic_write(out / "predictions.csv", lambda f: f.write(csv_text(rows).encode()))
    save_json(out / "predictions.json", {
        "image_threshold": thresholds.image, "pixel_threshold": thresholds.pixel,
        "checkpoint": signature.checkpoint, "config": model.config.to_dict(), "predict_config": config.to_dict(),
        "reference": ({"images": model.reference_sources, "digest": signature.reference}
                      if signature.reference else None),
        "predictions": rows})
