"""Zero-shot testing (docs/method.md §5, §6, §10): batched inference, per-class metrics,
tables and results.json."""
from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from tabulate import tabulate

from ..config import EvalConfig
from ..core.runtime import seed_everything
from ..data.canvases import CanvasDataset
from ..data.meta import Item, read_meta
from ..detector.facade import DHRCLIP
from ..detector.inference import build_reference
from ..errors import UserError
from ..files import save_json
from .class_metrics import METRIC_NAMES, ClassMetrics, metrics_by_class
from .distributed import extreme_across, world

log = logging.getLogger(__name__)


def over_defined(rows: Iterable[dict[str, float | None]], reduce: Callable[[list[float]], float] = np.mean,
                 names: Sequence[str] = METRIC_NAMES) -> dict[str, float | None]:
    """Each metric ``reduce``d over the rows where it is defined; None where no row defines it
    (a class mean, the std over few-shot draws, a block of the suite's table)."""
    rows = list(rows)
    result: dict[str, float | None] = {}
    for name in names:
        values = [value for row in rows if (value := row[name]) is not None]
        result[name] = float(reduce(values)) if values else None
    return result


def mean_metrics(per_class: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    """Mean over the classes where each metric is defined."""
    return over_defined(per_class.values())


def format_table(per_class: dict[str, dict], mean: dict, names: list[str], std: dict | None = None) -> str:
    """Per-class table with a mean row, percentages to one decimal, n/a where undefined; with
    ``std`` (over few-shot draws) the mean row shows mean ± std."""
    def cell(v: float | None, spread: float | None = None) -> str:
        if v is None:
            return "n/a"
        return f"{100 * v:.1f}" if spread is None else f"{100 * v:.1f} ± {100 * spread:.1f}"
    rows = [[cls, *(cell(per_class[cls][n]) for n in names)] for cls in per_class]
    rows.append(["mean", *(cell(mean[n], (std or {}).get(n)) for n in names)])
    return tabulate(rows, headers=["objects", *names], tablefmt="pipe")


def protocol_header(model: DHRCLIP, config: EvalConfig, checkpoint: str | None) -> str:
    """One line that says what a table is: the checkpoint, zero-shot or K-shot with its draws,
    the grid and the geometry."""
    protocol = (f"{config.k_shot}-shot, {config.k_shot_runs} draw{'s' if config.k_shot_runs > 1 else ''}"
                if config.k_shot else "zero-shot")
    c = model.config
    return (f"checkpoint {checkpoint or 'none (untrained prompts)'} | {protocol} | "
            f"{model.grid_for(config.run).describe()} | S={c.image_size} P={c.patch_image_size} "
            f"T={c.target_image_size} | map_norm {config.map_norm}, aupro {config.aupro}")


def draw_references(config: EvalConfig, classes: list[str], seed: int) -> dict[str, list[Item]]:
    """``k_shot`` good images per class from the dataset's train split, drawn with ``seed`` and the
    class's name, so a class draws the same images whichever other classes are tested."""
    try:
        train = read_meta(config.data_path, "train", classes)
    except UserError as exc:
        raise UserError(f"k_shot {config.k_shot} draws good images from the train split of meta.json: {exc}",
                        field="k_shot") from exc
    drawn = {}
    for cls in classes:
        rng = np.random.default_rng([seed, zlib.crc32(cls.encode())])  # a class's draw is its own
        good = [item for item in train[cls] if not item.anomaly]
        if len(good) < config.k_shot:
            raise UserError(f"k_shot {config.k_shot}: class {cls} has only {len(good)} good train image(s) in "
                            f"{config.data_path / 'meta.json'}", field="k_shot")
        drawn[cls] = [good[i] for i in sorted(rng.choice(len(good), config.k_shot, replace=False))]
    return drawn


def few_shot_metrics(model: DHRCLIP, by_class: dict[str, list[Item]], config: EvalConfig, pixel_classes: set[str],
                     image: bool) -> tuple[ClassMetrics, list[dict]]:
    """``k_shot_runs`` few-shot tests: per run and class, a bank from ``k_shot`` good train images
    (seed ``seed + run``) and the class's metrics with it. Returns the per-class means over runs
    (with the seconds spent on metrics and the images left out), and each run's draw and metrics."""
    run_options = config.run
    grid = model.grid_for(run_options)
    runs: list[dict[str, Any]] = []
    metrics_s = 0.0
    skipped: dict[str, str] = {}
    by_type: dict[str, list[dict[str, dict[str, float | None]]]] = {}
    for run in range(config.k_shot_runs):
        seed = run_options.seed + run
        drawn = draw_references(config, list(by_class), seed)
        per_class: dict[str, dict[str, float | None]] = {}
        for cls, items in by_class.items():
            references = CanvasDataset(drawn[cls], grid, run_options)
            bank = build_reference(model.model, references, [str(item.image) for item in drawn[cls]],
                                   progress=world().is_main)
            few = model.with_reference(bank, run_options)
            found = metrics_by_class(few, {cls: items}, config, pixel_classes & {cls}, image)
            per_class.update(found.per_class)
            metrics_s += found.seconds
            skipped.update(found.skipped)
            for cls_, kinds in found.by_type.items():
                by_type.setdefault(cls_, []).append(kinds)
        runs.append({"seed": seed, "references": {c: [str(i.image) for i in drawn[c]] for c in by_class},
                     "classes": per_class, "mean": mean_metrics(per_class)})
    averaged = {cls: mean_metrics({str(k): run["classes"][cls] for k, run in enumerate(runs)}) for cls in by_class}
    types = {cls: {kind: mean_metrics({str(k): draw[kind] for k, draw in enumerate(draws)}) for kind in draws[0]}
             for cls, draws in by_type.items()}
    return ClassMetrics(averaged, metrics_s, skipped, types), runs


def _classes_with_masks(by_class: dict[str, list[Item]]) -> set[str]:
    """The classes whose anomalous images all have masks; the others are named in a warning."""
    complete = set()
    for cls, items in by_class.items():
        missing = [item.image for item in items if item.anomaly and not item.masks]
        if missing and len(missing) == sum(item.anomaly for item in items):  # labels only, by design
            log.info("class %s has no masks: image-level metrics only", cls)
        elif missing:  # an index that lost some masks
            log.warning("class %s: %d anomalous image(s) have no mask (first: %s); image-level metrics only for "
                        "this class", cls, len(missing), missing[0])
        else:
            complete.add(cls)
    return complete


def _notes(by_class: dict[str, list[Item]], pixel_classes: set[str], pixel: bool, image: bool) -> list[str]:
    """Why metrics that were asked for are null: classes without masks have no pixel metrics, and
    classes without both normal and anomalous test images no image metrics."""
    notes = []
    unmasked = [c for c in by_class if c not in pixel_classes]
    missing = {c: sum(item.anomaly and not item.masks for item in by_class[c]) for c in unmasked}
    anomalous = {c: sum(item.anomaly for item in by_class[c]) for c in unmasked}
    labels_only = [c for c in unmasked if missing[c] == anomalous[c]]
    if pixel and labels_only:
        notes.append(f"pixel metrics null for {', '.join(labels_only)}: no masks (image-level ground truth only)")
    for c in (c for c in unmasked if pixel and c not in labels_only):
        notes.append(f"pixel metrics null for {c}: {missing[c]} of its {anomalous[c]} anomalous images have no mask")
    one_sided = {c: "anomalous" if items[0].anomaly else "normal" for c, items in by_class.items()
                 if len({item.anomaly for item in items}) == 1}
    if image and one_sided:
        kinds = sorted(set(one_sided.values()))
        notes.append(f"image metrics null for {', '.join(one_sided)}: every test image is {' or '.join(kinds)}, so "
                     f"image AUROC, AP and F1-max are undefined")
    return notes


def evaluate(model: DHRCLIP, config: EvalConfig) -> dict:
    """Zero-shot test of ``model`` on the test split of ``config.data_path``.

    Prints the per-class table, appends it to ``save_path/log.txt`` and writes
    ``save_path/results.json``, which it also returns: {"dataset",
    "checkpoint", "config", "test_config", "classes": {cls: {metric: value}},
    "mean", "notes", "skipped", "header", "defect_types", "timing"}; metrics are fractions, None where undefined
    ("notes" says why); "skipped" names the unreadable images left out (``on_error`` skip).
    With ``k_shot`` each class is tested with a few-shot bank
    of its good train images (docs/method.md §11); "classes" and "mean" average the
    ``k_shot_runs`` draws, and "k_shot" holds each draw's images and metrics and the
    std over draws.
    """
    seed_everything(config.run.seed)
    by_class = read_meta(config.data_path, "test", config.classes)
    dataset = config.dataset or config.data_path.resolve().name
    want_pixel = config.metrics in ("pixel-level", "image-pixel-level")
    want_image = config.metrics in ("image-level", "image-pixel-level")
    items = [item for cls in by_class for item in by_class[cls]]
    pixel_classes = _classes_with_masks(by_class) if want_pixel else set()
    if want_pixel and not want_image and not pixel_classes:
        raise UserError(f"metrics pixel-level: no class of {config.data_path} has a mask for every anomalous "
                        f"image, so there is nothing to report; use metrics image-level", field="metrics")
    want_pixel = bool(pixel_classes)
    if config.aupro == "legacy" and want_pixel and not model.grid_for(config.run).uniform:
        raise UserError("`aupro` legacy reproduces the reference's fixed-canvas protocol; use `grid` fixed with it",
                        field="aupro")

    checkpoint = str(model.checkpoint) if model.checkpoint is not None else None
    log.info("testing %s on %s (%d images, %d classes) on %s in %s", checkpoint or "untrained prompts",
             config.data_path, len(items), len(by_class), model.device, str(model.precision).removeprefix("torch."))
    started = time.perf_counter()
    runs: list[dict] = []
    if config.k_shot:
        found, runs = few_shot_metrics(model, by_class, config, pixel_classes, want_image)
    else:
        found = metrics_by_class(model, by_class, config, pixel_classes, want_image)
    per_class, metrics_s = found.per_class, found.seconds
    # the job's time is its slowest process's
    inference_s = extreme_across(time.perf_counter() - started - metrics_s, largest=True)
    metrics_s = extreme_across(metrics_s, largest=True)
    mean = mean_metrics(per_class)
    notes = _notes(by_class, pixel_classes, config.metrics != "image-level", want_image)
    if found.skipped:
        notes.append(f"{len(found.skipped)} unreadable image(s) left out of the metrics (see 'skipped')")
    for note in notes:
        log.info("%s: %s", dataset, note)

    names = [n for n in METRIC_NAMES
             if (want_pixel and n.startswith("pixel")) or (want_image and n.startswith("image"))]
    std = over_defined([run["mean"] for run in runs], np.std) if len(runs) > 1 else None  # population std
    header = protocol_header(model, config, checkpoint)
    table = f"{header}\n{format_table(per_class, mean, names, std)}"
    if config.defect_types and found.by_type:
        rows = {f"{cls}/{kind}": metrics for cls, kinds in found.by_type.items() for kind, metrics in kinds.items()}
        table += f"\n\nper defect type:\n{format_table(rows, mean_metrics(rows), names)}"
    here = world()
    results = {
        "dataset": dataset,
        "checkpoint": checkpoint,
        "config": model.config.to_dict(),
        "test_config": config.to_dict(),
        "header": header,  # the checkpoint, protocol, grid and geometry, as the table's first line
        "classes": per_class,
        "defect_types": found.by_type,  # class -> defect type -> metrics (classes with two types or more)
        "pixel_metric_classes": sorted(pixel_classes),  # the classes behind the pixel means
        "mean": mean,
        "notes": notes,  # why a metric is null, and whether images were left out
        "skipped": found.skipped,  # unreadable images (path -> why), not in any metric
        "timing": {"images": len(items) - len(found.skipped), "inference_s": inference_s, "metrics_s": metrics_s,
                   "processes": here.size},
    }
    if config.k_shot:  # "classes" and "mean" are then the means over the draws
        results["k_shot"] = {"k": config.k_shot, "std": std, "runs": runs}
    if not here.is_main:  # every rank has the numbers; rank 0 reports them
        return results
    print(table)
    config.save_path.mkdir(parents=True, exist_ok=True)
    with open(config.save_path / "log.txt", "a") as handle:
        handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {dataset} {checkpoint}\n{table}\n")
    save_json(config.save_path / "results.json", results)
    done = len(items) - len(found.skipped)
    log.info("%d images%s: inference %.1f s (%.1f images/s), metrics %.1f s; results in %s", done,
             f" ({len(found.skipped)} unreadable, left out)" if found.skipped else "", inference_s,
             done / max(inference_s, 1e-9), metrics_s, config.save_path / "results.json")
    return results
