"""What an artifact holds for, and one check of it against a run.

A threshold file, a few-shot bank, a resumed checkpoint and an exported ONNX file each hold for
the model settings, the tile grid, the checkpoint and the bank they were made with, and only
some of those matter to each: a bank does not care which prompts are used, thresholds care
about everything. ``Signature`` records the four parts; ``Signature.check`` compares an
artifact's with a run's within a ``Scope`` that says which parts count and how the refusal
reads. Torch-free, so the ONNX runtime uses it too.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import PurePath
from typing import Any

from ..config import DEFAULT_MAX_TILES, FIXED_GRID, GRID_MODES, ModelConfig
from ..config.fields import recorded, whole
from ..core.grid import describe_record, normalized_record, unused_model_fields
from ..errors import UserError

log = logging.getLogger(__name__)

# Settings that never change what a bank's tokens are (they act after the vision tower).
_NOT_VISION = ("depth", "n_ctx", "t_n_ctx", "sigma", "alpha")


@dataclass(frozen=True)
class Scope:
    """Which parts of a signature must agree, and the words of a refusal.

    ``ignore``: model settings that play no part (besides those the grid does not use);
    ``weights``: whether the backbone's weights must be the same; ``setting``, ``grid``,
    ``checkpoint`` and ``reference``: the refusal for a difference there (None: that part does
    not count), formatted with ``where`` (the artifact), ``name``, ``recorded`` and ``current``.
    """

    ignore: tuple[str, ...]
    weights: bool
    setting: str
    grid: str | None = None
    checkpoint: str | None = None
    reference: str | None = None
    field: str | None = None  # the setting that names the artifact, for a refusal that is not about a setting


THRESHOLDS = Scope(
    ignore=(), weights=True, field="threshold_file",
    setting="this run uses {name}={current}, but {where} was calibrated with {recorded}; recalibrate with "
            "calibrate_on or use the same setting",
    grid="{where} was calibrated with {recorded}, and this run uses {current}; use the same grid or recalibrate "
         "with calibrate_on",
    checkpoint="{where} was calibrated for the checkpoint {recorded}, not {current}; recalibrate with calibrate_on",
    reference="{where} was calibrated {recorded}, and this run uses {current}; give the same reference or "
              "recalibrate with calibrate_on")
BANK = Scope(
    ignore=_NOT_VISION, weights=True, field="reference",
    setting="reference {where} was built with {name}={recorded}, and this model uses {current}; rebuild it from "
            "the images",
    grid="reference {where} was built with {recorded}, and this run uses {current}; rebuild it or use that grid")
RESUME = Scope(
    ignore=(), weights=False, field="resume",
    setting="{name}={current} differs from the checkpoint being resumed (trained with {recorded}); resuming "
            "continues the same model")


@dataclass(frozen=True)
class Signature:
    """The model settings, tile grid (its record), checkpoint and few-shot bank something holds for."""

    config: ModelConfig | None                 # None: recorded by an earlier release, which kept no settings
    grid: dict[str, Any]
    checkpoint: str | None = None              # its path, for messages
    checkpoint_fingerprint: str | None = None  # files.fingerprint
    reference: str | None = None               # the bank's digest

    def check(self, current: Signature, scope: Scope, where: str) -> None:
        """Refuse ``current`` (a run) for this artifact's signature, within ``scope``, with one
        ``UserError`` naming the first part that differs."""
        recorded, now = self.config, current.config
        if recorded is None or now is None:  # nothing to compare the settings and checkpoint with
            log.warning("%s records no settings (an earlier release): it cannot be checked against this model",
                        where)
        else:
            self._check_settings(recorded, now, current, scope, where)
        if scope.grid is not None and normalized_record(self.grid) != normalized_record(current.grid):
            raise UserError(scope.grid.format(where=where, recorded=describe_record(self.grid),
                                              current=describe_record(current.grid)), field="grid")
        if scope.reference is not None and self.reference != current.reference:
            raise UserError(scope.reference.format(
                where=where, recorded="with a reference bank" if self.reference else "without a reference",
                current="another bank" if current.reference else "none"), field="reference")

    def _check_settings(self, recorded: ModelConfig, now: ModelConfig, current: Signature, scope: Scope,
                        where: str) -> None:
        if scope.weights and not recorded.same_weights(now):
            name: str | None = "pretrained"
        else:
            ignore = ("pretrained", "weights_fingerprint", *scope.ignore, *unused_model_fields(current.grid))
            name = now.first_difference(recorded, ignore=ignore)
        if name is not None:
            raise UserError(scope.setting.format(where=where, name=name, recorded=_shown(getattr(recorded, name)),
                                                 current=_shown(getattr(now, name))), field=name)
        if scope.checkpoint is not None and self.checkpoint_fingerprint != current.checkpoint_fingerprint:
            raise UserError(scope.checkpoint.format(where=where, recorded=self.checkpoint, current=current.checkpoint),
                            field=scope.field)

    def shared(self) -> Signature:
        """This signature as a file given to others records it: the checkpoint and the weights by
        their file names, so the file does not show this machine's folders (the fingerprints,
        which checks compare, are kept)."""
        return replace(self, config=self.config.shared() if self.config is not None else None,
                       checkpoint=PurePath(self.checkpoint).name if self.checkpoint else None)

    def to_dict(self) -> dict[str, Any]:
        """The record artifacts store (threshold files, ONNX metadata)."""
        return {"checkpoint": self.checkpoint, "checkpoint_fingerprint": self.checkpoint_fingerprint,
                "config": self.config.to_dict() if self.config is not None else None, "grid": dict(self.grid),
                "reference": self.reference}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> Signature:
        """The signature an artifact records, every part checked; a record without a grid was made
        before grids were recorded, on the fixed canvas."""
        config = data.get("config")
        if config is not None and not isinstance(config, Mapping):
            raise UserError(f'{where}: "config" must be a mapping of settings, got {_shown(config)}')
        return cls(ModelConfig.from_dict(config, where=where) if config is not None else None,
                   read_grid_record(data.get("grid"), where),
                   _optional_text(data, "checkpoint", where), _optional_text(data, "checkpoint_fingerprint", where),
                   _optional_text(data, "reference", where))


def read_grid_record(value: Any, where: str, field: str | None = None) -> dict[str, Any]:
    """A recorded grid, checked: ``{"mode": "fixed"}`` or ``{"mode": "auto", "max_tiles": N}``
    (``field``: the setting that named the file it is read from)."""
    if value is None:
        return {"mode": FIXED_GRID}
    if not isinstance(value, Mapping) or value.get("mode") not in GRID_MODES:
        raise UserError(f'{where}: "grid" must be a record with a mode of {", ".join(GRID_MODES)}, got '
                        f'{_shown(value)}', field=field)
    max_tiles = value.get("max_tiles", DEFAULT_MAX_TILES)
    try:
        whole(max_tiles, "max_tiles", 1, 1024)
    except UserError as exc:
        raise recorded(exc, where, "grid.", field) from exc
    return normalized_record({"mode": value["mode"], "max_tiles": max_tiles})


def _optional_text(data: Mapping[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise UserError(f'{where}: "{key}" must be a text or null, got {_shown(value)}')
    return value or None


def _shown(value: object) -> str:
    """A value as messages show it: tuples (features_list) as lists, as the user typed them; cut short."""
    shown = str(list(value) if isinstance(value, tuple) else value)
    return shown if len(shown) <= 80 else shown[:77] + "..."
