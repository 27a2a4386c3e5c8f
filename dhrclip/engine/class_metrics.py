"""Per-class metrics from one pass of batched inference (docs/method.md §10), in four pieces:

- ``ClassShard``: this process's contiguous share of a test run's items, and which class each
  image of a batch belongs to;
- ``ClassStates``: each class's additive metric state (histograms on the device, image scores),
  made when the class's first image arrives and freed once it is computed, merged across
  processes by summing;
- ``LegacyMaps``: the maps the reference's 200-threshold AUPRO needs, which no histogram holds;
- ``FigureSpool``: test.py's figures, drawn once every class's colour range is known.

``metrics_by_class`` runs them together.
"""
from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config import EvalConfig
from ..data.canvases import CanvasDataset, Masks
from ..data.meta import Item
from ..detector.facade import DHRCLIP
from ..detector.inference import BatchOutput, iter_batches
from ..metrics import ImageAccumulator, PixelAccumulator, legacy_aupro
from ..metrics.pixel import TIE_WARNING
from .distributed import World, barrier, gather_all, gather_to_main, sum_across, world
from .figures import ColorScale, save_test_figure, test_figure_path

log = logging.getLogger(__name__)

METRIC_NAMES = ("pixel_auroc", "pixel_aupro", "pixel_f1max", "pixel_ap", "image_auroc", "image_ap", "image_f1max")


@dataclass
class ClassState:
    """What testing keeps of one class: additive metric state, whatever the number of images."""

    pixel: PixelAccumulator | None
    image: ImageAccumulator = field(default_factory=ImageAccumulator)

    def compute(self, name: str, aupro_mode: str, legacy: float | None = None) -> dict[str, float | None]:
        """All seven metrics of class ``name``; None for those not asked for or undefined. With
        ``aupro_mode`` "legacy", AUPRO is the given ``legacy`` value. A warning names the class
        when float16's rounding of its scores may have moved a pixel metric noticeably."""
        result: dict[str, float | None] = dict.fromkeys(METRIC_NAMES)
        if self.pixel is not None:
            px = self.pixel.compute()
            bound = self.pixel.rounding_bound()
            if max(bound.values()) > TIE_WARNING:
                log.warning("class %s: its scores span few float16 steps, so its pixel AUROC may be off by up to "
                            "%.2f points and its AUPRO by up to %.2f; per-image normalisation of the maps "
                            "(map_norm per-image, the default) spreads them out", name, bound["auroc"],
                            bound["aupro"])
            if aupro_mode == "legacy":
                px["aupro"] = legacy
            result.update({f"pixel_{k}": v for k, v in px.items()})
        if self.image.scores:
            result.update({f"image_{k}": v for k, v in self.image.compute().items()})
        return result


class ClassStates:
    """The metric states of a test run's classes, made when a class's first image arrives. In one
    process a class is computed and its state freed as soon as its last image is in; under
    torchrun the states are summed across processes at the end, a few classes at a time. Memory
    follows the classes in flight, not the number of classes (a histogram state is 1.5 MB)."""

    MERGED_AT_ONCE = 32  # classes summed across processes in one collective

    def __init__(self, counts: dict[str, int], pixel_classes: set[str], image: bool, aupro: str,
                 device: torch.device) -> None:
        self.remaining = dict(counts)  # this process's images of each class still to come
        self.pixel_classes, self.image, self.aupro, self.device = pixel_classes, image, aupro, device
        self.live: dict[str, ClassState] = {}
        self.done: dict[str, dict[str, float | None]] = {}

    def __getitem__(self, name: str) -> ClassState:
        if name not in self.live:
            self.live[name] = self._new(name)
        return self.live[name]

    def _new(self, name: str) -> ClassState:
        return ClassState(PixelAccumulator(self.device) if name in self.pixel_classes else None)

    def added(self, name: str, count: int, legacy: LegacyMaps | None) -> None:
        """``count`` more images of ``name`` are in (or were left out, unreadable); in one process
        a complete class is computed now."""
        self.remaining[name] -= count
        if self.remaining[name] == 0 and world().size == 1:
            legacy_value = legacy.values.get(name) if legacy is not None else None
            self.done[name] = (self.live.pop(name, None) or self._new(name)).compute(name, self.aupro, legacy_value)

    def finish(self, names: list[str], legacy_values: dict[str, float | None]) -> dict[str, dict[str, float | None]]:
        """Every class's metrics, in the order of ``names``: under torchrun each group of classes is
        summed across processes (one all-reduce of the histograms, the few image scores gathered)."""
        pending = [c for c in names if c not in self.done]
        for start in range(0, len(pending), self.MERGED_AT_ONCE):
            group = pending[start:start + self.MERGED_AT_ONCE]
            states = {c: self.live.pop(c) if c in self.live else self._new(c) for c in group}
            pixels = [state.pixel for state in states.values() if state.pixel is not None]
            if pixels:
                stacked = sum_across(torch.stack([pixel.state for pixel in pixels]))
                for pixel, row in zip(pixels, stacked):
                    pixel.state = row
            if self.image and world().size > 1:
                merged = gather_all({c: state.image for c, state in states.items()})
                for c, state in states.items():
                    state.image = ImageAccumulator()
                    for part in merged:
                        state.image.merge(part[c])
            self.done.update({c: state.compute(c, self.aupro, legacy_values.get(c)) for c, state in states.items()})
        return {c: self.done[c] for c in names}


class ClassShard:
    """This process's contiguous share of the items of ``by_class`` (in whole batches), and the
    class of each of its images."""

    def __init__(self, by_class: dict[str, list[Item]], here: World, batch_size: int) -> None:
        self.names = list(by_class)
        self.starts = np.cumsum([0] + [len(by_class[c]) for c in self.names])
        self.all_items = [item for c in self.names for item in by_class[c]]
        self.range = here.shard(len(self.all_items), batch_size)
        self.items = self.all_items[self.range.start:self.range.stop]  # this process's share

    def class_of(self, positions: np.ndarray) -> np.ndarray:
        """The class index of items at run-wide ``positions``."""
        return np.searchsorted(self.starts, positions, side="right") - 1

    def by_class(self, index: np.ndarray) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """For a batch's shard ``index``: each class's name, its images' places in the batch, and
        their positions within the class."""
        positions = index + self.range.start
        owner = self.class_of(positions)
        for c in np.unique(owner):
            ks = np.flatnonzero(owner == c)
            yield self.names[c], ks, positions[ks] - self.starts[c]


class LegacyMaps:
    """The maps and masks the reference's 200-threshold AUPRO needs (``aupro="legacy"``): it
    cannot be computed from histograms, so each class's maps are kept until it is complete
    (in one process) or until the end, when rank 0 gathers them (under torchrun)."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self.parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {c: [] for c in counts}
        self.values: dict[str, float | None] = {}

    def add(self, cls: str, positions: np.ndarray, maps: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
        self.parts[cls].append((positions, torch.stack(maps).half().cpu().numpy(), torch.stack(masks).cpu().numpy()))
        self._complete(cls)

    def left_out(self, cls: str) -> None:
        """One image of ``cls`` could not be read: the class is complete with one image fewer."""
        if cls in self.counts:
            self.counts[cls] -= 1
            self._complete(cls)

    def _complete(self, cls: str) -> None:
        if world().size == 1 and cls in self.parts and sum(len(p) for p, _, _ in self.parts[cls]) == self.counts[cls]:
            self.values[cls] = self._compute(self.parts.pop(cls)) if self.counts[cls] else None

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
        return {cls: self._compute(parts) if (parts := [p for rank in gathered for p in rank[cls]]) else None
                for cls in self.counts}


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

    def add(self, cls: str, positions: np.ndarray, maps: list[torch.Tensor], scores: np.ndarray,
            sizes: np.ndarray, masks: list[torch.Tensor] | None) -> None:
        maps16 = [m.half().cpu().numpy() for m in maps]
        masks_np = [m.cpu().numpy() for m in masks] if masks is not None else None
        for k, i in enumerate(positions):
            arrays: dict[str, Any] = {"map": maps16[k], "score": scores[k], "size": sizes[k]}
            if masks_np is not None:
                arrays["mask"] = masks_np[k]
            np.savez(self.scratch / f"{int(i)}.npz", **arrays)
            self.written.append(int(i))
            _widen(self.ranges, cls, float(maps16[k].min()), float(maps16[k].max()))

    def draw(self, class_of: list[str], items: list[Item], bit_depth: int | None) -> None:
        """One figure per image, on its class's colour scale; the scratch folder is removed."""
        merged: dict[str, list[float]] = {}
        for part in gather_all(self.ranges):
            for cls, (low, high) in part.items():
                _widen(merged, cls, low, high)
        taken: set[Path] = set()
        for i in tqdm(self.written, desc="figures", unit="image", disable=None if world().is_main else True):
            with np.load(self.scratch / f"{i}.npz") as saved:
                save_test_figure(test_figure_path(self.folder, class_of[i], items[i], taken), items[i], saved["map"],
                                 saved.get("mask"), float(saved["score"]),
                                 (int(saved["size"][0]), int(saved["size"][1])),
                                 ColorScale.around(*merged[class_of[i]]), bit_depth)
        shutil.rmtree(self.scratch, ignore_errors=True)


def _widen(ranges: dict[str, list[float]], cls: str, low: float, high: float) -> None:
    """Extend ``cls``'s [lowest, highest] in ``ranges`` to take in low and high."""
    span = ranges.setdefault(cls, [low, high])
    span[0], span[1] = min(span[0], low), max(span[1], high)


def _resized(amap: torch.Tensor, size: Sequence[int] | np.ndarray) -> torch.Tensor:
    """A map bilinearly resized to (height, width), on its device."""
    h, w = (int(v) for v in size)
    if tuple(amap.shape) == (h, w):
        return amap
    return F.interpolate(amap[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]


def scored_maps(batch: BatchOutput) -> list[torch.Tensor]:
    """Each map of a batch where the metrics meet it: at its mask's size (the grid's scored size),
    else at its image's own size."""
    return [_resized(m, tuple(batch.masks[k].shape) if batch.masks is not None else batch.sizes[k])
            for k, m in enumerate(batch.maps)]


def _add_pixels(state: PixelAccumulator, maps: list[torch.Tensor], masks: list[torch.Tensor],
                sizes: list[torch.Tensor], regions: np.ndarray) -> None:
    """Add images to a class's pixel state, those of one shape in one update (the sums are exact,
    so how images are grouped does not matter)."""
    shapes: dict[tuple[int, ...], list[int]] = {}
    for k, m in enumerate(maps):
        shapes.setdefault(tuple(m.shape), []).append(k)
    for ks in shapes.values():
        state.update(torch.stack([maps[k] for k in ks]), torch.stack([masks[k] for k in ks]),
                     torch.stack([sizes[k] for k in ks]), int(regions[ks].sum()))


@dataclass
class ClassMetrics:
    """What one pass of testing found: per class its metrics, the seconds the metrics took, and
    the images left out because they could not be read (path -> why, from every process)."""

    per_class: dict[str, dict[str, float | None]]
    seconds: float
    skipped: dict[str, str] = field(default_factory=dict)
    by_type: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)  # class -> type -> metrics


class DefectTypes:
    """Per-defect-type metrics (MVTec AD's ``specie_name``) of the classes with two types or more:
    each type is scored on its anomalous images and all of its class's normal ones, in a state of
    its own named ``class/type`` (exact AUPRO, whatever ``aupro``), summed across processes like
    the classes' states."""

    def __init__(self, by_class: dict[str, list[Item]], shard: ClassShard, pixel_classes: set[str], image: bool,
                 device: torch.device) -> None:
        self.kinds = {c: sorted({i.specie_name for i in items if i.anomaly}) for c, items in by_class.items()}
        self.kinds = {c: kinds for c, kinds in self.kinds.items() if len(kinds) > 1}
        counts: Counter[str] = Counter()
        owners = shard.class_of(np.arange(len(shard.items)) + shard.range.start)
        for item, owner in zip(shard.items, owners):
            counts.update(self.targets(shard.names[owner], item))
        self.parts = {f"{c}/{t}": (c, t) for c, kinds in self.kinds.items() for t in kinds}
        self.names = list(self.parts)
        pixel = {f"{c}/{t}" for c in pixel_classes & set(self.kinds) for t in self.kinds[c]}
        self.states = ClassStates({n: counts.get(n, 0) for n in self.names}, pixel, image, "exact", device)

    def targets(self, cls: str, item: Item) -> list[str]:
        """The type states an image of class ``cls`` counts in: its own type's, or, when normal,
        every type's of its class."""
        kinds = self.kinds.get(cls, [])
        if not kinds:
            return []
        return [f"{cls}/{item.specie_name}"] if item.anomaly else [f"{cls}/{t}" for t in kinds]

    def finish(self) -> dict[str, dict[str, dict[str, float | None]]]:
        found = self.states.finish(self.names, {})
        out: dict[str, dict[str, dict[str, float | None]]] = {}
        for name, metrics in found.items():
            cls, kind = self.parts[name]
            out.setdefault(cls, {})[kind] = metrics
        return out


def metrics_by_class(model: DHRCLIP, by_class: dict[str, list[Item]], config: EvalConfig, pixel_classes: set[str],
                     image: bool) -> ClassMetrics:
    """Metrics of every class, from one pass of batched inference over this process's shard of
    the items. Each batch is added to its classes' states on the device, so only histograms
    leave it; the states of all processes are summed at the end. Pixel metrics for
    ``pixel_classes`` (legacy AUPRO on rank 0 only). With ``on_error`` skip, an unreadable image
    is left out of its class's metrics and reported."""
    here = world()
    run = config.run
    shard = ClassShard(by_class, here, run.batch_size)
    counts = Counter(shard.names[c] for c in shard.class_of(np.arange(len(shard.items)) + shard.range.start))
    states = ClassStates({c: counts.get(c, 0) for c in shard.names}, pixel_classes, image, config.aupro, model.device)
    legacy = LegacyMaps({c: len(by_class[c]) for c in pixel_classes}) if config.aupro == "legacy" else None
    spool = FigureSpool(config.save_path / "vis", here.rank) if config.vis else None
    metrics_s = 0.0
    dataset = CanvasDataset(shard.items, model.grid_for(run), run, Masks.SCORED if pixel_classes else None,
                            skip_errors=config.on_error == "skip")
    skipped: dict[str, str] = {}
    types = DefectTypes(by_class, shard, pixel_classes, image, model.device)
    for batch in iter_batches(model.model, dataset, config.map_norm, desc="testing", progress=here.is_main):
        began = time.perf_counter()
        for position, why in batch.errors.items():
            name = shard.names[int(shard.class_of(np.array([position + shard.range.start]))[0])]
            log.warning("left out of %s's metrics: %s", name, why)
            skipped[str(shard.items[position].image)] = why
            if legacy is not None:
                legacy.left_out(name)
            states.added(name, 1, legacy)
            for target in types.targets(name, shard.items[position]):
                types.states.added(target, 1, None)
        maps = scored_maps(batch)
        for name, ks, within in shard.by_class(batch.index):
            labels = [shard.items[i].anomaly for i in batch.index[ks]] if image else None
            masks = _add(states[name], batch, ks, maps, labels)
            if legacy is not None and masks is not None:
                legacy.add(name, within, [maps[k] for k in ks], masks)
            if spool is not None:
                spool.add(name, batch.index[ks] + shard.range.start, [maps[k] for k in ks], batch.scores[ks],
                          batch.sizes[ks], masks)
            states.added(name, len(ks), legacy)
        grouped: dict[str, list[int]] = {}
        for name, ks, _ in shard.by_class(batch.index):
            for k in ks:
                for target in types.targets(name, shard.items[batch.index[k]]):
                    grouped.setdefault(target, []).append(int(k))
        for target, picked in grouped.items():
            ks = np.array(picked)
            _add(types.states[target], batch, ks, maps,
                 [shard.items[i].anomaly for i in batch.index[ks]] if image else None)
            types.states.added(target, len(ks), None)
        metrics_s += time.perf_counter() - began
    barrier()  # waiting for the other processes' inference is inference time

    began = time.perf_counter()
    legacy_values = legacy.finish() if legacy is not None else {}
    per_class = states.finish(shard.names, legacy_values)
    if spool is not None:
        every = np.arange(len(shard.all_items))
        spool.draw([shard.names[c] for c in shard.class_of(every)], shard.all_items, run.bit_depth)
    by_type = types.finish()
    metrics_s += time.perf_counter() - began
    every_skipped = {path: why for part in gather_all(skipped) for path, why in part.items()}
    return ClassMetrics(per_class, metrics_s, every_skipped, by_type)


def _add(state: ClassState, batch: BatchOutput, ks: np.ndarray, maps: list[torch.Tensor],
         labels: list[int] | None) -> list[torch.Tensor] | None:
    """Images ``ks`` of a batch into a state: their scores with their ``labels`` (None: image
    metrics not asked for), and their maps where it keeps pixels. Returns their masks when
    pixels were added."""
    if labels is not None:
        state.image.update(batch.scores[ks], np.array(labels))
    if state.pixel is None or batch.masks is None or batch.region_sizes is None or batch.regions is None:
        return None
    masks = [batch.masks[k] for k in ks]
    _add_pixels(state.pixel, [maps[k] for k in ks], masks, [batch.region_sizes[k] for k in ks], batch.regions[ks])
    return masks
