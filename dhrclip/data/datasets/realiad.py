"""Real-IAD: 30 classes, 5 camera views per sample; labels live only in the JSON files.

    realiad_jsons/<class>.json             {"meta": {"prefix", "normal_class": "OK"},
                                            "train": [...], "test": [...]}; each sample has
                                            category, anomaly_class, image_path, mask_path
    realiad_1024/<class>/OK/S0001/<class>_0001_OK_C1_<time>.jpg    (or realiad_512, realiad_256,
    realiad_1024/<class>/NG/<defect>/S0001/..._C1_<time>.jpg        realiad_raw: the first found)
    realiad_1024/<class>/NG/<defect>/S0001/..._C1_<time>.png        masks, named in the JSON

A sample is normal when its ``anomaly_class`` is the JSON's ``normal_class``
or it has no mask (views of a defective sample where the defect is not
visible), as in the dataset's own loader. Paths are taken from the JSON, never
built from names. The JSONs are read from ``realiad_jsons/`` or a nested
``realiad_jsons/realiad_jsons/``; ``realiad_jsons_sv`` and
``realiad_jsons_fuiad_*`` (other protocols) are not read.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ...errors import UserError
from ..indexing import Index

log = logging.getLogger(__name__)

IMAGE_FOLDERS = ("realiad_1024", "realiad_512", "realiad_256", "realiad_raw")


def _resolve(base: Path, prefix: str, cls: str, relative: str) -> Path | None:
    """The file a JSON path names: under the prefix, under the class folder, or as given."""
    for candidate in (base / prefix / relative, base / cls / relative, base / relative):
        if candidate.is_file():
            return candidate
    return None


def _samples(table: Path) -> tuple[str, str, dict[str, list[dict]]]:
    """A class JSON's (normal class, path prefix, samples by split), or a UserError naming it."""
    try:
        data = json.loads(table.read_text())
        meta = data.get("meta", {})
        samples = {split: list(data.get(split) or []) for split in ("train", "test")}
        for rows in samples.values():
            for row in rows:
                if not isinstance(row, dict) or not isinstance(row.get("image_path"), str):
                    raise ValueError(f"a sample without an image_path: {str(row)[:80]}")
        return str(meta.get("normal_class", "OK")), str(meta.get("prefix") or ""), samples
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError, ValueError) as exc:
        raise UserError(f"{table} is not a Real-IAD JSON (meta, train and test lists of samples with "
                        f"image_path): {exc}") from exc


def index(root: Path, classes: list[str] | None = None) -> dict:
    idx = Index(root, "realiad", classes)
    root = idx.root
    jsons = next((d for d in (root / "realiad_jsons" / "realiad_jsons", root / "realiad_jsons") if d.is_dir()), None)
    if jsons is None:
        raise UserError(f"{root} has no realiad_jsons/ folder: Real-IAD's labels are only in its JSON files")
    base = next((root / d for d in IMAGE_FOLDERS if (root / d).is_dir()), root)
    log.info("reading the images under %s", base)
    for table in sorted(jsons.glob("*.json")):
        cls = table.stem
        if not idx.wants(cls):
            continue
        normal, prefix, samples = _samples(table)
        for split, rows in samples.items():
            for sample in rows:
                image = _resolve(base, prefix, cls, sample["image_path"])
                if image is None:
                    idx.skip(f"{split} images named in the JSON but not on disk")
                    continue
                defect = str(sample.get("anomaly_class") or normal)
                anomalous = defect != normal and bool(sample.get("mask_path"))
                mask = _resolve(base, prefix, cls, str(sample["mask_path"])) if anomalous else None
                if anomalous and mask is None:
                    idx.skip(f"{split} masks named in the JSON but not on disk")
                elif split == "train" and anomalous:
                    idx.skip("anomalous samples of the train list")
                else:
                    idx.add(split, cls, image, int(anomalous), mask, defect)
    return idx.meta()
