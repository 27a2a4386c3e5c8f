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
built from names (some classes use a double underscore). Some copies nest the
JSONs as ``realiad_jsons/realiad_jsons/``; ``realiad_jsons_sv`` and
``realiad_jsons_fuiad_*`` (other protocols) are not read.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..indexing import Index

IMAGE_FOLDERS = ("realiad_1024", "realiad_512", "realiad_256", "realiad_raw")


def _resolve(base: Path, prefix: str, cls: str, relative: str) -> Path | None:
    """The file a JSON path names: under the prefix, under the class folder, or as given."""
    for candidate in (base / prefix / relative, base / cls / relative, base / relative):
        if candidate.is_file():
            return candidate
    return None


def index(root: Path, classes: list[str] | None = None) -> dict:
    root = Path(root)
    idx = Index(root, "realiad", classes)
    jsons = next((d for d in (root / "realiad_jsons" / "realiad_jsons", root / "realiad_jsons") if d.is_dir()), None)
    if jsons is None:
        raise UserError(f"{root} has no realiad_jsons/ folder: Real-IAD's labels are only in its JSON files")
    base = next((root / d for d in IMAGE_FOLDERS if (root / d).is_dir()), root)
    for table in sorted(jsons.glob("*.json")):
        cls = table.stem
        if not idx.wants(cls):
            continue
        try:
            data = json.loads(table.read_text())
            normal = data["meta"].get("normal_class", "OK")
            prefix = data["meta"].get("prefix", "")
        except (json.JSONDecodeError, KeyError, AttributeError) as exc:
            raise UserError(f"{table} is not a Real-IAD JSON with meta, train and test ({exc})") from exc
        for split in ("train", "test"):
            for sample in data.get(split, []):
                image = _resolve(base, prefix, cls, sample["image_path"])
                if image is None:
                    idx.skip(f"{split} images named in the JSON but not on disk")
                    continue
                mask = _resolve(base, prefix, cls, sample["mask_path"]) if sample.get("mask_path") else None
                anomalous = sample.get("anomaly_class", normal) != normal and sample.get("mask_path")
                if anomalous and mask is None:
                    idx.skip(f"{split} masks named in the JSON but not on disk")
                    continue
                if split == "train" and anomalous:
                    idx.skip("anomalous samples of the train list")
                    continue
                idx.add(split, cls, image, int(bool(anomalous)), mask if anomalous else None,
                        sample.get("anomaly_class", ""))
    return idx.meta()
