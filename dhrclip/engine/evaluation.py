"""Zero-shot testing (docs/method.md §5, §6, §10): batched inference, per-class metrics,
tables and results.json."""
from __future__ import annotations

import logging
import shutil
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tabulate import tabulate
from tqdm import tqdm

from ..config import EvalConfig
from ..data.canvases import AutoGrid, CanvasDataset, Item, read_meta
from ..detector.facade import DHRCLIP
from .distributed import barrier, extreme_across, gather_all, gather_to_main, sum_across, world
from ..errors import UserError
from ..files import save_json
from ..detector.inference import build_reference, canvas_for, iter_batches
from ..metrics import ImageAccumulator, PixelAccumulator, legacy_aupro
from ..core.runtime import seed_everything
from .figures import ColorScale, save_test_figure

log = logging.getLogger(__name__)

METRIC_NAMES = ("pixel_auroc", "pixel_aupro", "pixel_f1max", "pixel_ap", "image_auroc", "image_ap", "image_f1max")


@dataclass
class ClassState:
    """What testing keeps of one class: additive metric state, whatever the number of images."""

    pixel: PixelAccumulator | None
    image: ImageAccumulator = field(default_factory=ImageAccumulator)

    def compute(self, aupro_mode: str, legacy: float | None = None) -> dict[str, float | None]:
        """All seven metrics; None for those not asked for or undefined. With ``aupro_mode``
        "legacy", AUPRO is the given ``legacy`` value."""
        result: dict[str, float | None] = dict.fromkeys(METRIC_NAMES)
        if self.pixel is not None:
            px = self.pixel.compute()
            if aupro_mode == "legacy":
                px["aupro"] = legacy
            result.update({f"pixel_{k}": v for k, v in px.items()})
        if self.image.scores:
            result.update({f"image_{k}": v for k, v in self.image.compute().items()})
        return result


class LegacyMaps:
    """The maps and masks the reference's 200-threshold AUPRO needs (``aupro="legacy"``): it
    cannot be computed from histograms, so each class's maps are kept until it is complete
    (in one process) or until the end, when rank 0 gathers them (under torchrun)."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self.parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {c: [] for c in counts}
        self.values: dict[str, float | None] = {}

    def add(self, cls: str, positions: np.ndarray, maps: torch.Tensor, masks: torch.Tensor) -> None:
        self.parts[cls].append((positions, maps.half().cpu().numpy(), masks.cpu().numpy()))
        if world().size == 1 and sum(len(p) for p, _, _ in self.parts[cls]) == self.counts[cls]:
            self.values[cls] = self._compute(self.parts.pop(cls))

    @staticmethod
    def _compute(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> float | None:
        order = np.argsort(np.concatenate([p for p, _, _ in parts]))
        maps = np.concatenate([m for _, m, _ in parts])[order]
        masks = np.concatenate([k for _, _, k in parts])[order]
        return legacy_aupro(masks, maps)

    def finish(self) -> dict[str, float | None]:
        """Every class's value on rank 0 (an empty dict elsewhere)."""
        if world().size == 1:
            return self.values
        gathered = gather_to_main(self.parts)
        if gathered is None:
            return {}
        return {cls: self._compute([p for rank in gathered for p in rank[cls]]) for cls in self.counts}


class FigureSpool:
    """test.py's figures (``vis``) without keeping maps in memory: each rank writes the maps of
    the images it owns to a scratch folder as they come, and draws their figures at the end,
    when every class's colour scale (its lowest and highest score over all ranks) is known."""

    def __init__(self, folder: Path, rank: int) -> None:
        self.folder = folder
        self.scratch = folder / f".maps-{rank}"
        if world().is_main:  # an interrupted run's scratch maps, whatever its number of processes
            for old in folder.glob(".maps-*"):
                shutil.rmtree(old, ignore_errors=True)
        barrier()
        self.scratch.mkdir(parents=True)
        self.written: list[int] = []
        self.ranges: dict[str, list[float]] = {}  # per class: lowest and highest score written here

    def add(self, cls: str, positions: np.ndarray, maps: torch.Tensor | list[torch.Tensor], scores: np.ndarray,
            sizes: np.ndarray, masks: torch.Tensor | list[torch.Tensor] | None) -> None:
        maps16 = [m.half().cpu().numpy() for m in maps]
        masks_np = [m.cpu().numpy() for m in masks] if masks is not None else None
        for k, i in enumerate(positions):
            np.savez(self.scratch / f"{int(i)}.npz", map=maps16[k], score=scores[k], size=sizes[k],
                     **({"mask": masks_np[k]} if masks_np is not None else {}))
            self.written.append(int(i))
            _widen(self.ranges, cls, float(maps16[k].min()), float(maps16[k].max()))

    def draw(self, class_of: list[str], items: list[Item], bit_depth: int | None) -> None:
        """One figure per image, on its class's colour scale; the scratch folder is removed."""
        merged: dict[str, list[float]] = {}
        for part in gather_all(self.ranges):
            for cls, (low, high) in part.items():
                _widen(merged, cls, low, high)
        for i in tqdm(self.written, desc="figures", unit="image", disable=None if world().is_main else True):
            with np.load(self.scratch / f"{i}.npz") as saved:
                save_test_figure(self.folder / class_of[i], items[i], saved["map"],
                                 saved["mask"] if "mask" in saved else None, float(saved["score"]),
                                 tuple(int(v) for v in saved["size"]), ColorScale.around(*merged[class_of[i]]),
                                 bit_depth)
        shutil.rmtree(self.scratch, ignore_errors=True)


def _widen(ranges: dict[str, list[float]], cls: str, low: float, high: float) -> None:
    """Extend ``cls``'s [lowest, highest] in ``ranges`` to take in low and high."""
    span = ranges.setdefault(cls, [low, high])
    span[0], span[1] = min(span[0], low), max(span[1], high)


def _resized(amap: torch.Tensor, size: tuple[int, int] | np.ndarray) -> torch.Tensor:
    """A map bilinearly resized to (height, width), on its device."""
    h, w = (int(v) for v in size)
    if tuple(amap.shape) == (h, w):
        return amap
    return F.interpolate(amap[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]


def over_defined(rows: Iterable[dict[str, float | None]], reduce: Callable[[list[float]], float] = np.mean,
                 names: Sequence[str] = METRIC_NAMES) -> dict[str, float | None]:
    """Each metric ``reduce``d over the rows where it is defined; None where no row defines it
    (a class mean, the std over few-shot draws, a block of the suite's table)."""
    rows = list(rows)
    result: dict[str, float | None] = {}
    for name in names:
        values = [row[name] for row in rows if row[name] is not None]
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
                     image: bool) -> tuple[dict[str, dict[str, float | None]], float, list[dict]]:
    """``k_shot_runs`` few-shot tests: per run and class, a bank from ``k_shot`` good train images
    (seed ``seed + run``) and the class's metrics with it. Returns the per-class means over runs,
    the seconds spent on metrics, and each run's draw and metrics."""
    canvas = canvas_for(model.model, config.grid, config.max_tiles)
    runs, metrics_s = [], 0.0
    for run in range(config.k_shot_runs):
        seed = config.seed + run
        drawn = draw_references(config, list(by_class), seed)
        per_class: dict[str, dict[str, float | None]] = {}
        for cls, items in by_class.items():
            references = CanvasDataset(drawn[cls], canvas, with_masks=False, bit_depth=config.bit_depth)
            bank = build_reference(model.model, references, config.batch_size, config.num_workers,
                                   [str(item.image) for item in drawn[cls]])
            few = model.with_reference(bank, config.grid, config.max_tiles)
            found, seconds = metrics_by_class(few, {cls: items}, config, pixel_classes & {cls}, image)
            per_class.update(found)
            metrics_s += seconds
        runs.append({"seed": seed, "references": {c: [str(i.image) for i in drawn[c]] for c in by_class},
                     "classes": per_class, "mean": mean_metrics(per_class)})
    averaged = {cls: mean_metrics({str(k): run["classes"][cls] for k, run in enumerate(runs)}) for cls in by_class}
    return averaged, metrics_s, runs


def metrics_by_class(model: DHRCLIP, by_class: dict[str, list[Item]], config: EvalConfig, pixel_classes: set[str],
                     image: bool) -> tuple[dict[str, dict[str, float | None]], float]:
    """Metrics of every class, from one pass of batched inference over this process's shard of
    the items. Each batch is added to its classes' accumulators on the device, so only
    histograms leave it; the accumulators of all processes are summed at the end. Pixel
    metrics for ``pixel_classes``. Returns the metrics (on every rank; legacy AUPRO on rank 0
    only) and the seconds spent on them."""
    here = world()
    names = list(by_class)
    starts = np.cumsum([0] + [len(by_class[c]) for c in names])
    items = [item for c in names for item in by_class[c]]
    mine = here.shard(len(items), config.batch_size)
    device = model.device
    states = {c: ClassState(PixelAccumulator(device) if c in pixel_classes else None) for c in names}
    legacy = LegacyMaps({c: len(by_class[c]) for c in pixel_classes}) if config.aupro == "legacy" else None
    spool = FigureSpool(config.save_path / "vis", here.rank) if config.vis else None
    metrics_s = 0.0
    auto = config.grid == "auto"
    canvas = AutoGrid(model.config.patch_image_size, config.max_tiles) if auto else model.config.target_image_size
    dataset = CanvasDataset(items[mine.start:mine.stop], canvas, bool(pixel_classes), config.bit_depth, regions=True,
                            native_masks=True)
    for batch in iter_batches(model.model, dataset, config.batch_size, config.num_workers, config.map_norm,
                              desc="testing"):
        began = time.perf_counter()
        positions = batch.index + mine.start
        owner = np.searchsorted(starts, positions, side="right") - 1
        if auto:  # each map at its own image's (its mask's) size
            sized = [_resized(m, tuple(batch.masks[k].shape) if batch.masks is not None else batch.sizes[k])
                     for k, m in enumerate(batch.maps)]
        for c in np.unique(owner):
            name, rows = names[c], owner == c
            ks = np.flatnonzero(rows)
            on_device = torch.from_numpy(rows).to(model.device)
            state = states[name]
            if image:
                state.image.update(batch.scores[rows], [items[i].anomaly for i in positions[rows]])
            if state.pixel is not None:
                if auto:
                    for k in ks:
                        state.pixel.update(sized[k][None], batch.masks[k][None], batch.region_sizes[k][None],
                                           int(batch.regions[k]))
                else:
                    state.pixel.update(batch.maps[on_device], batch.masks[on_device], batch.region_sizes[on_device],
                                       int(batch.regions[rows].sum()))
                if legacy is not None:
                    legacy.add(name, positions[rows] - starts[c], batch.maps[on_device], batch.masks[on_device])
            if spool is not None:
                with_masks = state.pixel is not None
                if auto:
                    spool.add(name, positions[rows], [sized[k] for k in ks], batch.scores[rows],
                              batch.sizes[rows], [batch.masks[k] for k in ks] if with_masks else None)
                else:
                    spool.add(name, positions[rows], batch.maps[on_device], batch.scores[rows], batch.sizes[rows],
                              batch.masks[on_device] if with_masks else None)
        metrics_s += time.perf_counter() - began
    barrier()  # waiting for the other processes' inference is inference time

    began = time.perf_counter()
    pixel_names = [c for c in names if states[c].pixel is not None]
    if pixel_names:  # one all-reduce for every class's histograms
        stacked = sum_across(torch.stack([states[c].pixel.state for c in pixel_names]))
        for c, row in zip(pixel_names, stacked):
            states[c].pixel.state = row
    if image and here.size > 1:  # image scores are few: every rank gets all of them
        merged = gather_all({c: states[c].image for c in names})
        for c in names:
            states[c].image = ImageAccumulator()
            for part in merged:
                states[c].image.merge(part[c])
    legacy_values = legacy.finish() if legacy is not None else {}
    per_class = {c: states[c].compute(config.aupro, legacy_values.get(c)) for c in names}
    if spool is not None:
        spool.draw([names[c] for c in np.searchsorted(starts, np.arange(len(items)), side="right") - 1], items,
                   config.bit_depth)
    metrics_s += time.perf_counter() - began
    return per_class, metrics_s


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
    "mean", "notes", "timing"}; metrics are fractions, None where undefined
    ("notes" says why). With ``k_shot`` each class is tested with a few-shot bank
    of its good train images (docs/method.md §11); "classes" and "mean" average the
    ``k_shot_runs`` draws, and "k_shot" holds each draw's images and metrics and the
    std over draws.
    """
    seed_everything(config.seed)
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
    if config.grid == "auto" and config.aupro == "legacy" and want_pixel:
        raise UserError("aupro legacy reproduces the reference's fixed-canvas protocol; use grid fixed with it",
                        field="aupro")

    checkpoint = str(model.checkpoint) if model.checkpoint is not None else None
    log.info("testing %s on %s (%d images, %d classes) on %s in %s", checkpoint or "untrained prompts",
             config.data_path, len(items), len(by_class), model.device, str(model.precision).removeprefix("torch."))
    started = time.perf_counter()
    runs: list[dict] = []
    if config.k_shot:
        per_class, metrics_s, runs = few_shot_metrics(model, by_class, config, pixel_classes, want_image)
    else:
        per_class, metrics_s = metrics_by_class(model, by_class, config, pixel_classes, want_image)
    # the job's time is its slowest process's
    inference_s = extreme_across(time.perf_counter() - started - metrics_s, largest=True)
    metrics_s = extreme_across(metrics_s, largest=True)
    mean = mean_metrics(per_class)
    notes = _notes(by_class, pixel_classes, config.metrics != "image-level", want_image)
    for note in notes:
        log.info("%s: %s", dataset, note)

    names = [n for n in METRIC_NAMES
             if (want_pixel and n.startswith("pixel")) or (want_image and n.startswith("image"))]
    std = over_defined([run["mean"] for run in runs], np.std) if len(runs) > 1 else None  # population std
    table = format_table(per_class, mean, names, std)
    here = world()
    results = {
        "dataset": dataset,
        "checkpoint": checkpoint,
        "config": model.config.to_dict(),
        "test_config": config.to_dict(),
        "classes": per_class,
        "pixel_metric_classes": sorted(pixel_classes),  # the classes behind the pixel means
        "mean": mean,
        "notes": notes,  # why a metric is null
        "timing": {"images": len(items), "inference_s": inference_s, "metrics_s": metrics_s,
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
    log.info("%d images: inference %.1f s (%.1f images/s), metrics %.1f s; results in %s", len(items), inference_s,
             len(items) / inference_s, metrics_s, config.save_path / "results.json")
    return results
