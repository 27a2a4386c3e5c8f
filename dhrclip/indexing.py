"""Building meta.json indexes (docs/method.md §8) from dataset layouts on disk."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

from .files import save_json
from .errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
MVTEC_CLASSES = ["bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
                 "screw", "tile", "toothbrush", "transistor", "wood", "zipper"]
MPDD_CLASSES = ["bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"]
BTAD_CLASSES = ["01", "02", "03"]
GOOD_NAMES = ("good", "ok")


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def find_mask(folder: Path, image: Path) -> Path | None:
    """The mask of ``image`` in ``folder``: ``<stem>_mask.*`` or ``<stem>.*`` with an image suffix."""
    if not folder.is_dir():
        return None
    for stem in (f"{image.stem}_mask", image.stem):
        for candidate in sorted(folder.glob(f"{stem}.*")):
            if candidate.suffix.lower() in IMAGE_SUFFIXES:
                return candidate
    return None


def item(root: Path, image: Path, mask: Path | None, cls: str, specie: str, anomaly: int) -> dict:
    return {"img_path": image.relative_to(root).as_posix(),
            "mask_path": mask.relative_to(root).as_posix() if mask else "",
            "cls_name": cls, "specie_name": specie, "anomaly": anomaly}


def mvtec_layout_index(root: Path, classes: list[str] | None = None, expected: list[str] | None = None) -> dict:
    """Index ``cls/{train,test}/{defect}/img`` with masks in ``cls/ground_truth/{defect}/``.

    Serves MVTec AD, MPDD, BTAD and synthetic data. Classes default to every
    folder that has a ``test/`` subfolder; a missing standard class is logged.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset root not found: {root}")
    found = sorted(p.name for p in root.iterdir() if (p / "test").is_dir())
    if classes:
        absent = [c for c in classes if c not in found]
        if absent:
            raise UserError(f"classes {absent} have no {root}/<class>/test folder")
    else:
        classes = found
    if not classes:
        raise UserError(f"{root} has no <class>/test folders: not an MVTec-style dataset")
    if expected and set(expected) - set(classes):
        log.warning("%s lacks the standard classes %s", root, sorted(set(expected) - set(classes)))
    meta: dict = {"train": {}, "test": {}}
    for cls in classes:
        for split in ("train", "test"):
            split_dir = root / cls / split
            if not split_dir.is_dir():
                continue
            rows = []
            for defect_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
                defect = defect_dir.name
                normal = defect in GOOD_NAMES
                for image in images_in(defect_dir):
                    mask = None if normal else find_mask(root / cls / "ground_truth" / defect, image)
                    rows.append(item(root, image, mask, cls, defect, 0 if normal else 1))
            if rows:
                meta[split][cls] = rows
    return meta


def visa_index(root: Path, classes: list[str] | None = None, csv_name: str = "split_csv/1cls.csv") -> dict:
    """Index VisA from its ``split_csv/1cls.csv`` (columns object, split, label, image, mask)."""
    root = Path(root)
    table = root / csv_name
    if not table.is_file():
        raise UserError(f"{table} not found: is {root} the VisA root (prepared with its split_csv)?")
    meta: dict = {"train": {}, "test": {}}
    with open(table, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"object", "split", "label", "image", "mask"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{table} lacks the columns {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            cls = row["object"]
            if classes and cls not in classes:
                continue
            if row["split"] not in meta:
                raise UserError(f"{table}:{line}: split must be train or test, got {row['split']!r}")
            anomaly = 1 if row["label"] == "anomaly" else 0
            meta[row["split"]].setdefault(cls, []).append({
                "img_path": row["image"], "mask_path": row["mask"] if anomaly else "",
                "cls_name": cls, "specie_name": "", "anomaly": anomaly})
    if not meta["test"]:
        raise UserError(f"{table} lists no test images" + (f" of {classes}" if classes else ""))
    return meta


def write_meta(root: Path, meta: dict) -> Path:
    """Write ``root/meta.json`` atomically and log a summary."""
    path = Path(root) / "meta.json"
    save_json(path, meta)
    for split, by_class in meta.items():
        count = sum(len(v) for v in by_class.values())
        log.info("%s: %d classes, %d images", split, len(by_class), count)
    log.info("wrote %s", path)
    return path


def folder_index(root: Path, class_name: str | None = None) -> dict:
    """Index a plain layout: ``good/`` plus one folder per defect type, masks optional in
    ``ground_truth/<defect>/<stem>_mask.*`` or ``<stem>.*``.

    ``root`` is one class (named ``class_name`` or after the folder) when it
    has a ``good/`` folder; otherwise every subfolder with ``good/`` is a class.
    Everything goes into the ``test`` split.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset root not found: {root}")
    if any((root / g).is_dir() for g in GOOD_NAMES):
        class_dirs = {class_name or root.name: root}
    else:
        class_dirs = {p.name: p for p in sorted(root.iterdir())
                      if p.is_dir() and any((p / g).is_dir() for g in GOOD_NAMES)}
    if not class_dirs:
        raise UserError(f"{root} has no good/ folder (nor subfolders with one); expected good/ plus a folder "
                        f"per defect type")
    meta: dict = {"train": {}, "test": {}}
    for cls, folder in class_dirs.items():
        rows = []
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "ground_truth"):
            normal = sub.name in GOOD_NAMES
            for image in images_in(sub):
                mask = None if normal else find_mask(folder / "ground_truth" / sub.name, image)
                rows.append(item(root, image, mask, cls, sub.name, 0 if normal else 1))
        if not rows:
            raise UserError(f"class folder {folder} holds no images")
        meta["test"][cls] = rows
    return meta


_LABELS = {"0": 0, "1": 1, "normal": 0, "good": 0, "ok": 0, "anomaly": 1, "anomalous": 1, "bad": 1, "defect": 1,
           "ng": 1}


def csv_index(root: Path, table: Path) -> dict:
    """Index a CSV with columns ``image,mask,label,class`` (mask may be empty; label 0/1 or
    normal/anomaly); paths are relative to ``root`` or absolute."""
    root, table = Path(root), Path(table)
    if not table.is_file():
        raise UserError(f"{table} not found")
    meta: dict = {"train": {}, "test": {}}
    with open(table, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"image", "mask", "label", "class"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{table} lacks the columns {sorted(missing)} (expected image,mask,label,class)")
        for line, row in enumerate(reader, start=2):
            label = _LABELS.get(str(row["label"]).strip().lower())
            if label is None:
                raise UserError(f"{table}:{line}: label {row['label']!r} is not 0/1 or normal/anomaly")
            meta["test"].setdefault(row["class"], []).append({
                "img_path": row["image"], "mask_path": row["mask"] or "", "cls_name": row["class"],
                "specie_name": "good" if label == 0 else "defect", "anomaly": label})
    if not meta["test"]:
        raise UserError(f"{table} lists no images")
    return meta
