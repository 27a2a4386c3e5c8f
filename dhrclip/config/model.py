"""The model's settings: everything that decides what the detector computes, saved in every
checkpoint, and how settings given for a run merge into what a checkpoint recorded.

Torch-free, so the command line can parse and print help before anything heavy loads.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import PurePath
from typing import Any

from ..errors import UserError
from .fields import number, recorded, require, setting, text, whole

log = logging.getLogger(__name__)

CONFIG_VERSION = 1
DEFAULT_MODEL = "ViT-L-14-336-quickgelu"

# How a value given at test time may differ from the checkpoint's (docs/method.md §9).
GEOMETRY_FIELDS = ("image_size", "patch_image_size", "target_image_size", "tiles_per_side", "sigma", "alpha")
TAP_FIELDS = ("features_list", "dpam")
PROMPT_FIELDS = ("depth", "n_ctx", "t_n_ctx")
DERIVED_FIELDS = ("quick_gelu", "weights_fingerprint")

# The largest values a configuration may hold: beyond any real model, and small enough that what is
# built from them (a T×T canvas, positional tables) cannot exhaust memory.
MAX_SIDE = 4096
MAX_TILES_PER_SIDE = 16
MAX_LAYERS = 256
MAX_CONTEXT = 64
MAX_SIGMA = 256.0

# Where a setting came from.
FROM_CHECKPOINT = "checkpoint"
FROM_TENSORS = "checkpoint tensors"
FROM_ARGUMENT = "argument"
FROM_DEFAULT = "default"
FROM_REFERENCE = "reference default"
FROM_BACKBONE = "backbone"


@dataclass(frozen=True)
class ModelConfig:
    """Everything that decides what the detector computes; saved in every checkpoint.

    Defaults are the authors' run-script settings. ``quick_gelu`` and
    ``weights_fingerprint`` are not chosen: they record the backbone that was
    actually built, so a later run can check it gets the same one.
    """

    model: str = setting(DEFAULT_MODEL, help="open_clip architecture, QuickGELU for OpenAI weights")
    pretrained: str = setting("openai", help="open_clip tag, path to a weights file (OpenAI .pt JIT/state dict, "
                                             "open_clip .pt/.bin, .safetensors), or 'none' for random weights")
    quick_gelu: bool | None = None      # recorded from the built backbone
    weights_fingerprint: str | None = None  # recorded from the weights file (files.fingerprint)
    image_size: int = setting(336, help="global view size S")
    patch_image_size: int = setting(224, help="tile size P")
    target_image_size: int = setting(448, help="high-resolution canvas size T")
    tiles_per_side: int = setting(2, help="tiles per side g of the canvas")
    features_list: tuple[int, ...] = setting((6, 12, 18, 24), help="1-based layers whose V-V tokens make the maps; "
                                                                   "the paper's numbers: 24, see README")
    dpam: int = setting(20, help="the last dpam-1 vision blocks get a V-V path")
    depth: int = setting(9, help="deep text prompt depth")
    n_ctx: int = setting(12, help="learned words per prompt")
    t_n_ctx: int = setting(4, help="learned tokens per deep text prompt")
    alpha: float = 0.75                 # weight of the global view's map
    sigma: float = setting(8.0, help="Gaussian smoothing of the maps, 0 for none")

    def __post_init__(self) -> None:
        """Every value's type and range, so that a setting read from a damaged or crafted file is
        refused here, before anything is built from it."""
        text(self.model, "model")
        text(self.pretrained, "pretrained")
        require(self.quick_gelu in (None, True, False), "quick_gelu", f"must be true or false, got {self.quick_gelu!r}")
        require(self.weights_fingerprint is None or isinstance(self.weights_fingerprint, str), "weights_fingerprint",
                f"must be a text, got {self.weights_fingerprint!r}")
        require(isinstance(self.features_list, (list, tuple)), "features_list",
                f"must be a list of layer numbers, got {self.features_list!r}")
        object.__setattr__(self, "features_list",
                           tuple(whole(v, "features_list", 1, MAX_LAYERS) for v in self.features_list))
        for name, high in (("image_size", MAX_SIDE), ("patch_image_size", MAX_SIDE), ("target_image_size", MAX_SIDE),
                           ("tiles_per_side", MAX_TILES_PER_SIDE)):
            value = getattr(self, name)
            whole(value, name)  # a whole number first, so that the range messages compare numbers
            require(value >= 1, name, f"must be positive, got {value}")
            require(value <= high, name, f"must be at most {high}, got {value}")
        for name, low, high in (("dpam", 1, MAX_LAYERS), ("depth", 1, MAX_LAYERS), ("n_ctx", 1, MAX_CONTEXT),
                                ("t_n_ctx", 0, MAX_CONTEXT)):
            whole(getattr(self, name), name, low, high)
        require(len(self.features_list) > 0, "features_list", "needs at least one layer")
        require(len(set(self.features_list)) == len(self.features_list), "features_list",
                f"{list(self.features_list)} names a layer twice")
        number(self.alpha, "alpha", 0.0, 1.0)
        number(self.sigma, "sigma")
        require(self.sigma >= 0, "sigma", f"must not be negative, got {self.sigma}")
        require(self.sigma <= MAX_SIGMA, "sigma", f"must be at most {MAX_SIGMA}, got {self.sigma}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values with a version field, as stored in checkpoints."""
        return {"version": CONFIG_VERSION, **asdict(self), "features_list": list(self.features_list)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "checkpoint") -> ModelConfig:
        """Inverse of ``to_dict``. A dict without a version is the flag list that earlier
        releases saved; its model settings are taken and the rest ignored."""
        if not isinstance(data, Mapping):
            raise UserError(f'{where}: "config" must be a mapping of settings, got {type(data).__name__}')
        data = {str(k): v for k, v in data.items()}
        names = {f.name for f in fields(cls)}
        version = data.pop("version", None)
        if version is None:
            log.info("%s stores its settings as saved flags (an earlier release); reading the model settings "
                     "from them", where)
            try:
                return cls(**{k: v for k, v in data.items() if k in names and v is not None})
            except UserError as exc:
                raise recorded(exc, where, "config.") from exc
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise UserError(f'{where}: "config.version" must be a whole number, got {version!r}')
        if version > CONFIG_VERSION:
            raise UserError(f"{where} has configuration version {version}; this release reads up to "
                            f"{CONFIG_VERSION}: update dhrclip")
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"{where} has unknown configuration fields {unknown}")
        try:
            return cls(**data)
        except UserError as exc:  # a recorded value: named as the file's field, not as a flag
            raise recorded(exc, where, "config.") from exc

    def first_difference(self, other: ModelConfig, ignore: tuple[str, ...] = ()) -> str | None:
        """The first field whose value differs from ``other``'s, or None."""
        for f in fields(self):
            if f.name not in ignore and getattr(self, f.name) != getattr(other, f.name):
                return f.name
        return None

    def shared(self) -> ModelConfig:
        """These settings as a file given to others records them: a weights file by its name
        alone (its fingerprint still identifies it), so the file does not show this machine's
        folders."""
        if self.weights_fingerprint is None:  # a tag, not a file
            return self
        return replace(self, pretrained=PurePath(self.pretrained).name)

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
        sources = dict(self.sources)
        pretrained = str(self.config.pretrained)
        if "model" in sources and pretrained.lower() != "none" and ("/" in pretrained or "." in pretrained):
            sources["model"] += ("; a weights file in OpenAI's format builds the architecture its tensors "
                                 "describe instead")
        return "\n".join(f"{name:<{width}}  {shown(getattr(self.config, name)):<28}  {source}"
                         for name, source in sources.items())


def resolve_model_config(overrides: Mapping[str, Any], saved: ModelConfig | None = None,
                         prompt_shapes: Mapping[str, Any] | None = None, resume: bool = False) -> ResolvedConfig:
    """Merge explicit settings (None = not given) into what a checkpoint recorded.

    ``saved``: the checkpoint's configuration. Without one, ``prompt_shapes``
    (n_ctx, depth, t_n_ctx read from a reference checkpoint's tensors) selects
    the reference defaults; with neither, plain defaults apply. The rules for
    testing: geometry may differ (logged); taps may differ (warned, naming
    both values); prompt shapes may not. With ``resume`` the values are only
    merged: the resumed checkpoint's signature is checked once the backbone is known
    (``detector.signature.RESUME``).
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
