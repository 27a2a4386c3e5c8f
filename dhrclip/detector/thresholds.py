"""threshold.json: thresholds with the signature they hold for, written by calibration and the
inspection page, read back by predict.py, export.py and the page. Torch-free.

``read_threshold_file`` is the one reader: it checks every field's type and range and ends any
damage in one ``UserError`` naming the file and the field.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.fields import number, recorded
from ..errors import UserError
from ..files import read_json
from .results import Thresholds
from .signature import THRESHOLDS, Signature


@dataclass(frozen=True)
class ThresholdFile:
    """A threshold.json as read: its thresholds, what they hold for (files of earlier releases
    recorded no settings, no grid or no bank) and everything else it records."""

    path: Path
    thresholds: Thresholds
    signature: Signature
    record: dict[str, Any]

    def check(self, current: Signature) -> None:
        """Refuse thresholds calibrated with other settings, another checkpoint, grid or bank."""
        self.signature.check(current, THRESHOLDS, str(self.path))


def threshold_record(signature: Signature, thresholds: Thresholds, **provenance: object) -> dict[str, Any]:
    """A threshold.json's contents: the thresholds, ``provenance`` (how they were found) and the
    signature they hold for (what ``ThresholdFile.check`` compares)."""
    return {"image_threshold": thresholds.image, "pixel_threshold": thresholds.pixel, **provenance,
            **signature.to_dict()}


def read_threshold_file(path: Path, field: str = "threshold_file") -> ThresholdFile:
    """A threshold.json, every field checked (``field``: the setting that named the file)."""
    path = Path(path)
    where = f"{field} {path}"
    data = read_json(path, field, field)
    if not isinstance(data, Mapping):
        raise UserError(f"{where} is not a threshold.json (a JSON object with image_threshold)", field=field)
    if "image_threshold" not in data:
        raise UserError(f"{where} is not a threshold.json: it has no image_threshold", field=field)
    try:
        image = number(data["image_threshold"], "image_threshold")
        pixel = None if data.get("pixel_threshold") is None else number(data["pixel_threshold"], "pixel_threshold")
        signature = Signature.from_dict(data, where)
    except UserError as exc:
        if str(exc).startswith(where):  # a signature's part, already placed in the file
            raise UserError(str(exc), field=field) from exc
        raise recorded(exc, where, field=field) from exc
    return ThresholdFile(path, Thresholds(image, pixel), signature, dict(data))
