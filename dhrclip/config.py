"""Typed settings: the model configuration every checkpoint carries, and the settings of
a training, test or prediction run.

This module imports neither torch nor the model, so the command line can parse
and print help before anything heavy loads. Field names are the names of the
matching command-line flags.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from .errors import UserError

log = logging.getLogger(__name__)

CONFIG_VERSION = 1
DEFAULT_MODEL = "ViT-L-14-336-quickgelu"

PRECISIONS = ("fp32", "fp16", "bf16")
FEATURE_CACHE_MODES = ("auto", "off", "memory", "disk")
METRIC_LEVELS = ("image-level", "pixel-level", "image-pixel-level")
MAP_NORMS = ("per-image", "none")
AUPRO_MODES = ("exact", "legacy")
ON_ERROR = ("skip", "stop")
FIGURE_SCALES = ("run", "image")
GRID_MODES = ("fixed", "auto")  # the T×T canvas with g×g tiles, or a grid chosen per image

# How a value given at test time may differ from the checkpoint's (docs/method.md §9).
GEOMETRY_FIELDS = ("image_size", "patch_image_size", "target_image_size", "tiles_per_side", "sigma", "alpha")
TAP_FIELDS = ("features_list", "dpam")
PROMPT_FIELDS = ("depth", "n_ctx", "t_n_ctx")
DERIVED_FIELDS = ("quick_gelu", "weights_fingerprint")

# Where a setting came from.
FROM_CHECKPOINT = "checkpoint"
FROM_TENSORS = "checkpoint tensors"
FROM_ARGUMENT = "argument"
FROM_DEFAULT = "default"
FROM_REFERENCE = "reference default"
FROM_BACKBONE = "backbone"


def _require(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise UserError(f"{name} {message}", field=name)


@dataclass(frozen=True)
class ModelConfig:
    """Everything that decides what the detector computes; saved in every checkpoint.

    Defaults are the authors' run-script settings. ``quick_gelu`` and
    ``weights_fingerprint`` are not chosen: they record the backbone that was
    actually built, so a later run can check it gets the same one.
    """

    model: str = DEFAULT_MODEL          # open_clip architecture
    pretrained: str = "openai"          # open_clip tag, weights file, or "none"
    quick_gelu: bool | None = None      # recorded from the built backbone
    weights_fingerprint: str | None = None  # recorded from the weights file (files.fingerprint)
    image_size: int = 336               # S, global view
    patch_image_size: int = 224         # P, tile
    target_image_size: int = 448        # T, canvas
    tiles_per_side: int = 2             # g
    features_list: tuple[int, ...] = (6, 12, 18, 24)
    dpam: int = 20
    depth: int = 9
    n_ctx: int = 12
    t_n_ctx: int = 4
    alpha: float = 0.75
    sigma: float = 8.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "features_list", tuple(int(v) for v in self.features_list))
        for name in ("image_size", "patch_image_size", "target_image_size", "tiles_per_side"):
            _require(getattr(self, name) >= 1, name, f"must be positive, got {getattr(self, name)}")
        _require(len(self.features_list) > 0, "features_list", "needs at least one layer")
        _require(len(set(self.features_list)) == len(self.features_list), "features_list",
                 f"{list(self.features_list)} names a layer twice")
        _require(0.0 <= self.alpha <= 1.0, "alpha", f"must be in [0, 1], got {self.alpha}")
        _require(self.sigma >= 0, "sigma", f"must not be negative, got {self.sigma}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values with a version field, as stored in checkpoints."""
        return {"version": CONFIG_VERSION, **asdict(self), "features_list": list(self.features_list)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "checkpoint") -> ModelConfig:
        """Inverse of ``to_dict``. A dict without a version is the flag list that earlier
        releases saved; its model settings are taken and the rest ignored."""
        data = dict(data)
        names = {f.name for f in fields(cls)}
        version = data.pop("version", None)
        if version is None:
            log.info("%s stores its settings as saved flags (an earlier release); reading the model settings "
                     "from them", where)
            return cls(**{k: v for k, v in data.items() if k in names and v is not None})
        if not isinstance(version, int) or version > CONFIG_VERSION:
            raise UserError(f"{where} has configuration version {version!r}; this release reads up to "
                            f"{CONFIG_VERSION}: update dhrclip")
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"{where} has unknown configuration fields {unknown}")
        return cls(**data)

    def first_difference(self, other: ModelConfig, ignore: tuple[str, ...] = ()) -> str | None:
        """The first field whose value differs from ``other``'s, or None."""
        for f in fields(self):
            if f.name not in ignore and getattr(self, f.name) != getattr(other, f.name):
                return f.name
        return None

    def same_weights(self, other: ModelConfig) -> bool:
        """Whether both name the same weights: by fingerprint when either has one (a file), else by tag."""
        if self.weights_fingerprint or other.weights_fingerprint:
            return self.weights_fingerprint == other.weights_fingerprint
        return self.pretrained == other.pretrained


# Checkpoints of the authors' code and of AnomalyCLIP carry no configuration. Their run
# script's settings apply, except the taps: the authors' four taps all held layer 24
# (docs/method.md §9), so [24] is what those prompts were trained on.
REFERENCE_CHECKPOINT_DEFAULTS = ModelConfig(features_list=(24,))


@dataclass(frozen=True)
class ResolvedConfig:
    """A model configuration and, per field, where its value came from."""

    config: ModelConfig
    sources: dict[str, str]

    def describe(self) -> str:
        """One line per field: name, value (lists space-separated), source."""
        def shown(value: object) -> str:
            return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
        width = max(len(name) for name in self.sources)
        return "\n".join(f"{name:<{width}}  {shown(getattr(self.config, name)):<28}  {source}"
                         for name, source in self.sources.items())


def resolve_model_config(overrides: Mapping[str, Any], saved: ModelConfig | None = None,
                         prompt_shapes: Mapping[str, int] | None = None, resume: bool = False) -> ResolvedConfig:
    """Merge explicit settings (None = not given) into what a checkpoint recorded.

    ``saved``: the checkpoint's configuration. Without one, ``prompt_shapes``
    (n_ctx, depth, t_n_ctx read from a reference checkpoint's tensors) selects
    the reference defaults; with neither, plain defaults apply. The rules for
    testing: geometry may differ (logged); taps may differ (warned, naming
    both values); prompt shapes may not. With ``resume`` the values are only
    merged: ``check_resumable`` decides, once the backbone is known.
    """
    names = [f.name for f in fields(ModelConfig)]
    given = {k: v for k, v in overrides.items() if v is not None}
    for name in given:
        if name not in names:
            raise UserError(f"{name} is not a model setting (they are: {', '.join(names)})", field=name)
        if name in DERIVED_FIELDS:
            raise UserError(f"{name} is recorded from the backbone and cannot be set", field=name)
    if "features_list" in given:
        given["features_list"] = tuple(int(v) for v in given["features_list"])

    if saved is not None:
        base, origin = saved, FROM_CHECKPOINT
    elif prompt_shapes is not None:
        base, origin = replace(REFERENCE_CHECKPOINT_DEFAULTS, **prompt_shapes), FROM_REFERENCE
        log.info("the checkpoint has no configuration (the authors' or AnomalyCLIP's format): using the authors' "
                 "run-script settings, with features_list [24] because the authors' four taps all held layer 24")
    else:
        base, origin = ModelConfig(), FROM_DEFAULT
    sources = {name: origin for name in names}
    sources.update(dict.fromkeys(prompt_shapes or {}, FROM_TENSORS))
    for name in DERIVED_FIELDS:
        sources[name] = FROM_CHECKPOINT if saved is not None and getattr(saved, name) is not None else FROM_BACKBONE

    for name, value in given.items():
        sources[name] = FROM_ARGUMENT
        old = getattr(base, name)
        if value == old or origin == FROM_DEFAULT or resume:
            continue
        if name in ("model", "pretrained"):  # another backbone: what it is shows once it is loaded
            base = replace(base, quick_gelu=None, weights_fingerprint=None)
            sources.update(dict.fromkeys(DERIVED_FIELDS, FROM_BACKBONE))
        shown_old, shown_new = _shown(old), _shown(value)
        if name in PROMPT_FIELDS:
            raise UserError(f"{name}={shown_new} does not fit the checkpoint: its prompts were trained with "
                            f"{shown_old}", field=name)
        if origin == FROM_REFERENCE:
            continue
        if name in TAP_FIELDS:
            log.warning("%s=%s differs from training (%s=%s): the prompts were learned on other layers",
                        name, shown_new, name, shown_old)
        elif name in GEOMETRY_FIELDS:
            log.info("%s=%s at test time (trained with %s)", name, shown_new, shown_old)
        elif name == "model":
            log.warning("model=%s differs from training (model=%s)", shown_new, shown_old)
    return ResolvedConfig(replace(base, **given), sources)


def _shown(value: object) -> object:
    """A setting as messages show it: tuples (features_list) as lists, as the user typed them."""
    return list(value) if isinstance(value, tuple) else value


def check_resumable(config: ModelConfig, saved: ModelConfig) -> None:
    """Resuming continues the same model: every setting must be the checkpoint's, except
    where its weights file lives (a different file of other weights is warned about when loaded)."""
    name = config.first_difference(saved, ignore=("pretrained", "weights_fingerprint"))
    if name is not None:
        raise UserError(f"{name}={_shown(getattr(config, name))} differs from the checkpoint being resumed (trained "
                        f"with {_shown(getattr(saved, name))}); "
                        f"resuming continues the same model", field=name)


def _plain(config: object) -> dict[str, Any]:
    """Dataclass fields as JSON-able values (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}


def _run_checks(config: object) -> None:
    """What every run shares: a batch size, workers ("auto" or a count), an output folder."""
    _positive(config, "batch_size")
    workers = config.num_workers
    _require(workers == "auto" or (isinstance(workers, int) and workers >= 0), "num_workers",
             f"must be auto or a count of at least 0, got {workers}")
    _require(not config.save_path.exists() or config.save_path.is_dir(), "save_path",
             f"{config.save_path} is a file, not a folder")
    _require(config.bit_depth is None or 8 <= config.bit_depth <= 16, "bit_depth",
             f"must be between 8 and 16, got {config.bit_depth}")
    _choice(config, "grid", GRID_MODES)
    _positive(config, "max_tiles")


def _positive(config: object, *names: str) -> None:
    for name in names:
        _require(getattr(config, name) >= 1, name, f"must be at least 1, got {getattr(config, name)}")


def _choice(config: object, name: str, choices: tuple[str, ...]) -> None:
    _require(getattr(config, name) in choices, name, f"must be one of {', '.join(choices)}, "
                                                     f"got {getattr(config, name)!r}")


def is_bank_file(reference: str | Path) -> bool:
    """A reference given as a saved bank rather than as images."""
    return str(reference).endswith(".safetensors")


@dataclass
class TrainConfig:
    """Settings of a training run (the model's own settings are a ``ModelConfig``)."""

    data_path: Path                     # dataset root holding meta.json; trains on its test split
    save_path: Path = Path("./checkpoint")
    dataset: str | None = None          # name in logs; default: the data folder's name
    epochs: int = 15
    learning_rate: float = 1e-3
    batch_size: int = 8
    print_freq: int = 1
    save_freq: int = 1
    image_loss_weight: float = 0.0
    feature_cache: str = "auto"
    resume: Path | None = None          # folder whose latest epoch_N.pth to continue from
    seed: int = 111
    num_workers: int | str = "auto"     # DataLoader workers; auto: none for small jobs
    bit_depth: int | None = None        # significant bits of 16-bit images; None: read or inferred
    device: str = "auto"                # used when train() builds the model itself
    precision: str | None = None
    grid: str = "fixed"                 # "fixed": the T×T canvas; "auto": a tile grid per image
    max_tiles: int = 9                  # with grid "auto": at most this many tiles

    def __post_init__(self) -> None:
        self.data_path, self.save_path = Path(self.data_path), Path(self.save_path)
        _positive(self, "epochs", "print_freq", "save_freq")
        _run_checks(self)
        _require(self.learning_rate > 0, "learning_rate", f"must be positive, got {self.learning_rate}")
        _require(self.image_loss_weight >= 0, "image_loss_weight",
                 f"must not be negative, got {self.image_loss_weight}")
        _choice(self, "feature_cache", FEATURE_CACHE_MODES)

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass
class EvalConfig:
    """Settings of a zero-shot test run."""

    data_path: Path
    save_path: Path = Path("./results")
    dataset: str | None = None          # name in logs and results.json; default: the data folder's name
    classes: list[str] | None = None
    metrics: str = "image-pixel-level"
    map_norm: str = "per-image"
    aupro: str = "exact"
    vis: bool = False
    batch_size: int = 8
    num_workers: int | str = "auto"
    bit_depth: int | None = None
    seed: int = 111
    grid: str = "fixed"                 # "fixed": the T×T canvas; "auto": a tile grid per image
    max_tiles: int = 9                  # with grid "auto": at most this many tiles
    k_shot: int = 0                     # few-shot: good train images per class in the reference bank; 0: zero-shot
    k_shot_runs: int = 1                # few-shot draws (seeds seed, seed+1, ...), reported as mean ± std

    def __post_init__(self) -> None:
        self.data_path, self.save_path = Path(self.data_path), Path(self.save_path)
        _run_checks(self)
        _require(self.k_shot >= 0, "k_shot", f"must be 0 (zero-shot) or a number of images, got {self.k_shot}")
        _positive(self, "k_shot_runs")
        _require(self.k_shot or self.k_shot_runs == 1, "k_shot_runs",
                 f"repeats few-shot draws and needs k_shot; got k_shot_runs {self.k_shot_runs} with k_shot 0")
        _choice(self, "metrics", METRIC_LEVELS)
        _choice(self, "map_norm", MAP_NORMS)
        _choice(self, "aupro", AUPRO_MODES)

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass
class PredictConfig:
    """Settings of a prediction run on unlabelled images."""

    input: str                          # an image, a folder (recursive) or a glob
    save_path: Path = Path("./predictions")
    threshold: float | None = None      # image-score threshold
    pixel_threshold: float | None = None
    threshold_file: Path | None = None
    calibrate_on: str | None = None     # folder or glob of known-good images
    calibrate_quantile: float = 1.0
    on_error: str = "skip"              # an unreadable image: "skip" (an error row) or "stop"
    overwrite: bool = False             # replace a previous run's outputs in save_path
    figure_scale: str = "run"           # heatmap colours: one scale for the run, or per image
    batch_size: int = 8
    num_workers: int | str = "auto"
    bit_depth: int | None = None
    seed: int = 111
    grid: str = "auto"                  # "fixed": the T×T canvas; "auto": a tile grid per image
    max_tiles: int = 9                  # with grid "auto": at most this many tiles
    reference: str | None = None        # few-shot: good images (file, folder, glob) or a saved bank (.safetensors)
    save_reference: Path | None = None  # where to save the bank built from reference images

    def __post_init__(self) -> None:
        self.save_path = Path(self.save_path)
        self.save_reference = Path(self.save_reference) if self.save_reference is not None else None
        _run_checks(self)
        _choice(self, "on_error", ON_ERROR)
        _require(self.save_reference is None or (self.reference is not None and not is_bank_file(self.reference)),
                 "save_reference", "needs reference images to build the bank from (a folder, a glob or image files)")
        _require(self.save_reference is None or self.save_reference.suffix == ".safetensors", "save_reference",
                 f"must name a .safetensors file, got {self.save_reference}")
        _choice(self, "figure_scale", FIGURE_SCALES)
        _require(0.0 < self.calibrate_quantile <= 1.0, "calibrate_quantile",
                 f"must be in (0, 1], got {self.calibrate_quantile}")

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)
