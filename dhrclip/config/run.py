"""The settings of a run: the options every run shares (``RunOptions``) and, composed with them,
what each command adds (training, testing, prediction, export, the inspection page, the demo).

Torch-free, so the command line can parse and print help before anything heavy loads. Every
field is declared with ``setting``; the command line offers it as a flag of the same name
unless the field says otherwise.
"""
from __future__ import annotations

import logging
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import UserError
from .fields import choice, positive, require, setting, workers
from .model import DEFAULT_MODEL

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")
FEATURE_CACHE_MODES = ("auto", "off", "memory", "disk")
METRIC_LEVELS = ("image-level", "pixel-level", "image-pixel-level")
MAP_NORMS = ("per-image", "none")
AUPRO_MODES = ("exact", "legacy")
ON_ERROR = ("skip", "stop")
FIGURE_SCALES = ("run", "image")
EXPORT_FORMATS = ("onnx",)
RUNTIMES = ("onnxruntime", "openvino")  # what runs an exported file
EXPORT_PRECISIONS = ("fp32", "fp16", "int8")  # of an exported vision tower
FIXED_GRID, AUTO_GRID = "fixed", "auto"
GRID_MODES = (FIXED_GRID, AUTO_GRID)  # the T×T canvas with g×g tiles, or a grid chosen per image (core/grid.py)
DEFAULT_MAX_TILES = 9

RUNTIME, GRID = "runtime", "dynamic resolution"  # help sections


@dataclass(frozen=True)
class RunOptions:
    """What every run shares: how images are read, batched and placed on their tile grid, the
    seed, and where the model runs. Each command's settings hold one, with the command's own
    defaults (``predict`` and the page use the auto grid, ``train`` and ``test`` the fixed one)."""

    device: str = setting("auto", help="auto (CUDA if present), cpu, cuda or cuda:N", group=RUNTIME)
    precision: str | None = setting(None, choices=PRECISIONS, group=RUNTIME,
                                    help="vision-tower precision (default: bf16 on CUDA, fp32 on CPU; the text "
                                         "tower is always fp32)")
    batch_size: int = setting(8, help="images per batch", group=RUNTIME)
    num_workers: int | str = setting("auto", parse=workers, group=RUNTIME,
                                     help="DataLoader worker processes; auto: none for small jobs, up to 4 for "
                                          "large ones (one per 4 cores when the model runs on the CPU)")
    bit_depth: int | None = setting(None, group=RUNTIME,
                                    help="significant bits of 16-bit images (default: the PNG's sBIT chunk, else "
                                         "inferred from each image's maximum as 10, 12, 14 or 16)")
    max_megapixels: float = setting(100.0, group=RUNTIME,
                                    help="largest image read, in megapixels, checked from the file's header before "
                                         "it is decoded; a larger one is refused (an error row where errors are "
                                         "skipped)")
    seed: int = setting(111, help="random seed", group=RUNTIME)
    grid: str = setting(FIXED_GRID, choices=GRID_MODES, group=GRID,
                        help="fixed: every image squashed to the T×T canvas and cut into g×g tiles (the published "
                             "method); auto: each image gets its own grid of P-pixel tiles at its own aspect ratio")
    max_tiles: int = setting(DEFAULT_MAX_TILES, help="with `grid` auto: at most this many tiles per image", group=GRID)

    def __post_init__(self) -> None:
        positive(self, "batch_size", "max_tiles")
        require(self.num_workers == "auto" or (isinstance(self.num_workers, int) and self.num_workers >= 0),
                "num_workers", f"must be auto or a count of at least 0, got {self.num_workers}")
        require(self.bit_depth is None or 8 <= self.bit_depth <= 16, "bit_depth",
                f"must be between 8 and 16, got {self.bit_depth}")
        choice(self, "grid", GRID_MODES)
        require(isinstance(self.max_megapixels, (int, float)) and self.max_megapixels > 0, "max_megapixels",
                f"must be positive, got {self.max_megapixels}")
        require(self.precision is None or self.precision in PRECISIONS, "precision",
                f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def max_pixels(self) -> int:
        """``max_megapixels`` in pixels."""
        return int(self.max_megapixels * 1_000_000)


def _auto_grid() -> RunOptions:
    return RunOptions(grid=AUTO_GRID)


def page_run() -> RunOptions:
    """How the inspection page runs images: as predict.py, without DataLoader workers (processes
    forked from the server's threads can hang), and images of at most 40 megapixels (a page shared
    on a network takes uploads from anyone)."""
    return RunOptions(grid=AUTO_GRID, num_workers=0, max_megapixels=40.0)


def _plain(config: object) -> dict[str, Any]:
    """Dataclass fields as JSON-able values (paths as strings), the run options flattened in, as
    results files record them."""
    out: dict[str, Any] = {}
    for key, value in asdict(config).items():  # type: ignore[call-overload]
        if isinstance(value, dict) and is_dataclass(getattr(config, key)):
            out.update(value)
        else:
            out[key] = str(value) if isinstance(value, Path) else value
    return out


def _save_path(config: Any) -> None:
    require(not config.save_path.exists() or config.save_path.is_dir(), "save_path",
            f"{config.save_path} is a file, not a folder")


def is_bank_file(reference: str | os.PathLike) -> bool:
    """A reference given as a saved bank rather than as images."""
    return str(reference).endswith(".safetensors")


@dataclass
class TrainConfig:
    """Settings of a training run (the model's own settings are a ``ModelConfig``)."""

    data_path: Path = setting(flag="train_data_path", optional_flag=True,
                              help="dataset root holding meta.json; trains on its test split (default: "
                                   "./data/<dataset>)")
    save_path: Path = setting(Path("./checkpoint"), help="where epoch_N.pth go")
    dataset: str | None = setting(None, help="name of the training dataset, for logs (default: the data folder's "
                                             "name; the default data path is ./data/mvtec)")
    epochs: int = setting(15, flag="epoch", help="training epochs")
    learning_rate: float = setting(1e-3, help="Adam's learning rate for the prompts")
    print_freq: int = setting(1, help="log the loss every N epochs")
    save_freq: int = setting(1, help="write a checkpoint every N epochs")
    image_loss_weight: float = setting(0.0, help="weight of the image-level cross-entropy on the global view "
                                                 "(the authors: computed, weight 0)")
    feature_cache: str = setting("auto", choices=FEATURE_CACHE_MODES,
                                 help="keep encoded views after epoch 1: auto picks device, host memory or disk "
                                      "by size")
    resume: Path | None = setting(None, help="continue from the last epoch_N.pth in this folder, with its settings")
    overwrite: bool = setting(False, help="replace a previous run's checkpoints in `save_path` (without it, or "
                                          "`resume`, such a folder is refused)")
    run: RunOptions = setting(factory=RunOptions)

    def __post_init__(self) -> None:
        self.data_path, self.save_path = Path(self.data_path), Path(self.save_path)
        positive(self, "epochs", "print_freq", "save_freq")
        _save_path(self)
        require(self.learning_rate > 0, "learning_rate", f"must be positive, got {self.learning_rate}")
        require(self.image_loss_weight >= 0, "image_loss_weight",
                f"must not be negative, got {self.image_loss_weight}")
        choice(self, "feature_cache", FEATURE_CACHE_MODES)

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def continuing(cls, recorded: Mapping[str, Any], given: Mapping[str, Any], resume: Path,
                   where: str) -> TrainConfig:
        """The settings of a run continued from ``resume``: those ``recorded`` in its checkpoint
        (``to_dict``'s form), the folder itself as ``save_path``, and the ``given`` settings on
        top: more epochs or another learning rate continue the run; another dataset would make
        it a different run and is refused. Where the machine runs it (``device``,
        ``num_workers``) is never inherited."""
        own = {f.name for f in fields(cls) if f.name != "run"} - {"resume", "overwrite", "save_path"}
        run_own = {f.name for f in fields(RunOptions)} - {"device", "num_workers"}
        hints = {**typing.get_type_hints(cls), **typing.get_type_hints(RunOptions)}
        base = {k: v for k, v in recorded.items() if k in own | run_own}
        for name, value in base.items():
            if not _fits(value, hints[name]):
                raise UserError(f"{where} records {name} {value!r}, not a {hints[name]}; it cannot be resumed",
                                field="resume")
        for name in ("data_path", "dataset"):
            mine, theirs = given.get(name), base.get(name)
            if name == "dataset" and theirs is None and base.get("data_path"):
                theirs = Path(base["data_path"]).name  # a run's dataset is named after its folder by default
            same = mine == theirs if name == "dataset" else Path(str(mine)).resolve() == Path(str(theirs)).resolve()
            if mine is not None and theirs is not None and not same:
                raise UserError(f"resume {resume}: the run trained on {name} {theirs}, not {mine}; continuing it on "
                                f"other data would make it another run (start one with save_path)", field=name)

        def made(values: Mapping[str, Any]) -> TrainConfig:
            return cls(**{k: v for k, v in values.items() if k in own | {"save_path", "resume", "overwrite"}},
                       run=RunOptions(**{k: v for k, v in values.items() if k in run_own | {"device", "num_workers"}}))
        try:
            made({**base, "save_path": resume, "resume": resume})  # the record alone must make settings
        except (TypeError, UserError) as exc:
            raise UserError(f"{where} records training settings that cannot be resumed ({exc})", field="resume") \
                from exc
        for name in sorted(set(given) & set(base)):
            if given[name] is not None and given[name] != base[name] and name != "data_path":
                log.info("resuming with %s %s (the run recorded %s)", name, given[name], base[name])
        return made({**base, "save_path": resume, **{k: v for k, v in given.items() if v is not None},
                     "resume": resume})


def _fits(value: Any, hint: Any) -> bool:
    """Whether a recorded (JSON-like) ``value`` can be the setting of type ``hint``: paths as
    strings, a float setting from an int, never a bool for a number."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return True
        if option is Path and isinstance(value, str):
            return True
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option in (str, bool) and isinstance(value, option):
            return True
    return False


@dataclass
class EvalConfig:
    """Settings of a zero-shot (or few-shot) test run."""

    data_path: Path = setting(optional_flag=True,
                              help="dataset root holding meta.json (default: ./data/<dataset>)")
    save_path: Path = setting(Path("./results"), help="where the results go")
    dataset: str | None = setting(None, help="name of the test dataset, for logs and the default path (default: "
                                             "the data folder's name)")
    classes: list[str] | None = setting(None, help="test only these classes of meta.json")
    metrics: str = setting("image-pixel-level", choices=METRIC_LEVELS, help="which metrics to compute")
    map_norm: str = setting("per-image", choices=MAP_NORMS,
                            help="min-max normalise each map (the reference's convention) or keep raw scores")
    aupro: str = setting("exact", choices=AUPRO_MODES,
                         help="exact MVTec AUPRO, or the reference's 200-threshold value for comparing with its "
                              "tables (legacy keeps each class's maps in host memory; exact keeps only histograms)")
    vis: bool = setting(False, help="write per-image figures with the ground truth")
    defect_types: bool = setting(False, help="also print a table per defect type (each type's anomalous images "
                                             "against the class's normal ones); results.json always has them")
    k_shot: int = setting(0, help="few-shot: a reference bank of K good images per class from the train split of "
                                  "meta.json, drawn with `seed` (0: zero-shot)")
    k_shot_runs: int = setting(1, help="few-shot draws (seeds `seed`, `seed`+1, ...), reported as mean ± std")
    on_error: str = setting("skip", choices=ON_ERROR,
                            help="an unreadable test image: leave it out of the metrics, name it in the log and "
                                 "results.json (exit status 3 at the end), or stop (exit 2)")
    run: RunOptions = setting(factory=RunOptions)

    def __post_init__(self) -> None:
        self.data_path, self.save_path = Path(self.data_path), Path(self.save_path)
        _save_path(self)
        require(self.k_shot >= 0, "k_shot", f"must be 0 (zero-shot) or a number of images, got {self.k_shot}")
        positive(self, "k_shot_runs")
        require(bool(self.k_shot) or self.k_shot_runs == 1, "k_shot_runs",
                f"repeats few-shot draws and needs k_shot; got k_shot_runs {self.k_shot_runs} with k_shot 0")
        choice(self, "metrics", METRIC_LEVELS)
        choice(self, "map_norm", MAP_NORMS)
        choice(self, "aupro", AUPRO_MODES)
        choice(self, "on_error", ON_ERROR)

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass
class PredictConfig:
    """Settings of a prediction run on unlabelled images."""

    input: str = setting(help="an image, a folder (searched recursively) or a glob pattern")
    save_path: Path = setting(Path("./predictions"), help="output folder")
    threshold: float | None = setting(None, help="image-score threshold")
    pixel_threshold: float | None = setting(None, help="map threshold: outline, and 'anomalous' where exceeded")
    threshold_file: Path | None = setting(None, help="a threshold.json written by calibration (refused for other "
                                                     "settings or checkpoints)")
    calibrate_on: str | None = setting(None, help="folder (or glob) of known-good images to set thresholds")
    calibrate_quantile: float = setting(1.0, help="quantile of the good images' scores and map maxima used as "
                                                  "thresholds (1.0: their maximum)")
    on_error: str = setting("skip", choices=ON_ERROR,
                            help="an unreadable image: skip it with an error row (exit status 3 at the end) or stop "
                                 "(exit 2)")
    overwrite: bool = setting(False, help="replace a previous run's outputs in `save_path` and an existing "
                                          "`save_reference` file (without it either is refused)")
    no_maps: bool = setting(False, help="write no maps/ folder of float16 maps (figures are still drawn unless "
                                        "`no_figures`)")
    no_figures: bool = setting(False, help="draw no figures/ (the table and, unless `no_maps`, the maps only)")
    figure_scale: str = setting("run", choices=FIGURE_SCALES,
                                help="heatmap colours: one scale for the whole run, or one per image; either is "
                                     "widened to put the pixel threshold in the middle when there is one")
    reference: str | None = setting(None, help="few-shot: good images of the part (folder, glob or file), or a bank "
                                               "saved with `save_reference` (.safetensors); their nearest-neighbour "
                                               "map is added to the zero-shot one")
    save_reference: Path | None = setting(None, help="save the bank built from `reference` images to this "
                                                     ".safetensors file")
    runtime: str = setting("onnxruntime", choices=RUNTIMES, help="with `onnx`: what runs the file (openvino needs "
                                                                 "the openvino package)")
    run: RunOptions = setting(factory=_auto_grid)

    def __post_init__(self) -> None:
        self.save_path = Path(self.save_path)
        self.save_reference = Path(self.save_reference) if self.save_reference is not None else None
        _save_path(self)
        choice(self, "on_error", ON_ERROR)
        require(self.save_reference is None or (self.reference is not None and not is_bank_file(self.reference)),
                "save_reference", "needs reference images to build the bank from (a folder, a glob or image files)")
        require(self.save_reference is None or self.save_reference.suffix == ".safetensors", "save_reference",
                f"must name a .safetensors file, got {self.save_reference}")
        choice(self, "figure_scale", FIGURE_SCALES)
        require(self.calibrate_on is None or self.threshold_file is None, "calibrate_on",
                "sets new thresholds and `threshold_file` gives saved ones; give one of them")
        require(0.0 < self.calibrate_quantile <= 1.0, "calibrate_quantile",
                f"must be in (0, 1], got {self.calibrate_quantile}")

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass
class ExportConfig:
    """Settings of an export to one ONNX file: ``run.grid`` is the grid it is exported for (by
    default the auto grid, as predict.py runs), ``exported_precision`` its vision tower's."""

    output: Path = setting(help="the .onnx file to write")
    format: str = setting("onnx", choices=EXPORT_FORMATS, help="file format")
    threshold_file: Path | None = setting(None, help="a threshold.json from calibration, stored in the file's "
                                                     "metadata")
    reference: str | None = setting(None, help="few-shot: good images or a saved bank (.safetensors) to bake into "
                                               "the graph")
    opset: int = setting(18, help="ONNX opset (18 or newer)")
    overwrite: bool = setting(False, help="replace an existing `output` file")
    exported_precision: str = setting("fp32", flag="precision", choices=EXPORT_PRECISIONS,
                                      help="the vision tower in the file: fp32; fp16 (for GPUs); int8, its matrix "
                                           "products quantised to 8 bits (for CPUs; the export logs how far its maps "
                                           "are from fp32's)")
    run: RunOptions = setting(factory=_auto_grid)

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        choice(self, "format", EXPORT_FORMATS)


@dataclass
class PageConfig:
    """Settings of the inspection page (its run options: ``page_run``)."""

    threshold_file: Path | None = setting(None, help="a threshold.json (calibration or the page's own) that the "
                                                     "sliders start at")
    reference: str | None = setting(None, help="few-shot: good images of the part (folder, glob or file), or a "
                                               "saved bank (.safetensors)")
    host: str = setting("127.0.0.1", help="address to listen on; the page has no login, so widen it only on a "
                                          "network you trust")
    port: int = setting(7860, help="port to listen on (0: any free one)")
    max_upload_mb: float = setting(50.0, help="largest image file the page takes, in MB")
    max_work_gb: float = setting(5.0, help="disk the page's uploads and results may take, in GB; images beyond it "
                                           "are refused until the page is cleared")
    run: RunOptions = setting(factory=page_run)

    def __post_init__(self) -> None:
        require(self.max_upload_mb > 0, "max_upload_mb", f"must be positive, got {self.max_upload_mb}")
        require(self.max_work_gb > 0, "max_work_gb", f"must be positive, got {self.max_work_gb}")


@dataclass
class DemoConfig:
    """Settings of the demo: the whole protocol on synthetic data."""

    save_path: Path = setting(Path("./demo_output"), help="where the data, checkpoints and results go")
    model: str = setting(DEFAULT_MODEL, help="open_clip architecture, used with real weights")
    pretrained: str = setting("openai", help="tag or weights file; 'none' forces the tiny random CLIP")
    epochs: int | None = setting(None, flag="epoch", help="training epochs (default: 15 with the tiny random CLIP, "
                                                          "3 with real weights)")
    run: RunOptions = setting(factory=RunOptions)

    def __post_init__(self) -> None:
        self.save_path = Path(self.save_path)
        require(self.epochs is None or self.epochs >= 1, "epochs", f"must be at least 1, got {self.epochs}")


def with_run(config: Any, **changes: Any) -> Any:
    """``config`` with some of its run options changed."""
    return replace(config, run=replace(config.run, **changes))
