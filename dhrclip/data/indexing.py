"""Building meta.json indexes (docs/method.md §8) from dataset layouts on disk."""
from __future__ import annotations

import csv
import glob
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..files import save_json
from .images import IMAGE_SUFFIXES, load_mask

log = logging.getLogger(__name__)

MVTEC_CLASSES = ["bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
                 "screw", "tile", "toothbrush", "transistor", "wood", "zipper"]
MPDD_CLASSES = ["bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"]
BTAD_CLASSES = ["01", "02", "03"]
GOOD_NAMES = ("good", "ok")


def is_good(folder_name: str) -> bool:
    """Whether a folder of a layout holds normal images (``good``, BTAD's ``ok``; any case)."""
    return folder_name.casefold() in GOOD_NAMES


def images_in(folder: Path) -> list[Path]:
    """The image files of ``folder``, sorted; hidden files (``.x``, macOS ``._x.png``) are not images."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def count_images(folder: Path, pattern: str = "*") -> int:
    """Image files at any depth of ``folder`` whose names match ``pattern`` (0 if it is not there):
    what an index leaves out is counted with this."""
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.rglob(pattern)
               if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def find_mask(folder: Path, image: Path) -> Path | None:
    """The mask of ``image`` in ``folder``: ``<stem>_mask.*`` or ``<stem>.*`` with an image suffix."""
    if not folder.is_dir():
        return None
    for stem in (f"{image.stem}_mask", image.stem):
        for candidate in sorted(folder.glob(f"{glob.escape(stem)}.*")):
            if candidate.suffix.lower() in IMAGE_SUFFIXES:
                return candidate
    return None


MaskFiles = Path | Sequence[Path] | None


def item(root: Path, image: Path, mask: MaskFiles, cls: str, specie: str, anomaly: int,
         mask_threshold: float | None = None) -> dict:
    """One meta.json item. ``mask``: none, a file, or several files read as their union (a list
    in meta.json); ``mask_threshold`` is recorded where masks need one: by default 127 when any
    of them is a JPEG (``mask_threshold_for``)."""
    masks = [] if mask is None else [mask] if isinstance(mask, Path) else list(mask)
    if mask_threshold is None:
        mask_threshold = max((mask_threshold_for(m) for m in masks), default=0)
    paths = [m.relative_to(root).as_posix() for m in masks]
    row: dict[str, Any] = {"img_path": image.relative_to(root).as_posix(),
                           "mask_path": paths if len(paths) > 1 else paths[0] if paths else "",
                           "cls_name": cls, "specie_name": specie, "anomaly": anomaly}
    if masks and mask_threshold:
        row["mask_threshold"] = mask_threshold
    return row


class Index:
    """A meta.json being built: items by split and class, and the files left out by reason.

    ``classes`` keeps only those classes; ``meta`` refuses a requested class
    that was never seen. Skipped files are counted, logged by ``write_meta`` and
    recorded under "info", so an image count that differs from a paper's can be
    traced to what was left out.
    """

    def __init__(self, root: Path, dataset: str, classes: list[str] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"dataset root not found: {self.root}")
        self.dataset = dataset
        self.classes = set(classes) if classes else None
        self.splits: dict[str, dict[str, list[dict]]] = {"train": {}, "test": {}}
        self.seen: set[str] = set()
        self.skipped: Counter[str] = Counter()

    def wants(self, cls: str) -> bool:
        """Whether items of ``cls`` are kept; ``cls`` is recorded as present either way."""
        self.seen.add(cls)
        return self.classes is None or cls in self.classes

    def add(self, split: str, cls: str, image: Path, anomaly: int, mask: MaskFiles = None, specie: str = "",
            mask_threshold: float | None = None) -> None:
        if self.wants(cls):
            self.splits[split].setdefault(cls, []).append(
                item(self.root, image, mask, cls, specie or ("good" if not anomaly else "anomaly"), anomaly,
                     mask_threshold))

    def skip(self, reason: str, count: int = 1, cls: str | None = None) -> None:
        """Count ``count`` files left out for ``reason`` (not when they belong to a class that
        ``classes`` leaves out anyway)."""
        if count and (cls is None or self.wants(cls)):
            self.skipped[reason] += count

    def meta(self) -> dict:
        """The meta.json contents; a UserError when the layout held no test images."""
        if self.classes is not None and self.classes - self.seen:
            raise UserError(f"{self.root}: classes {sorted(self.classes - self.seen)} not found in this "
                            f"{self.dataset} layout (it has {sorted(self.seen)})")
        skipped = dict(sorted(self.skipped.items()))
        if not self.splits["test"]:
            left_out = "; left out: " + ", ".join(f"{n} {why}" for why, n in skipped.items()) if skipped else ""
            raise UserError(f"{self.root} holds no {self.dataset} test images{left_out}; see the layouts in "
                            f"`python generate_dataset_json/{self.dataset}.py --help`")
        info = {"dataset": self.dataset, "skipped": skipped}
        if self.classes is not None:  # an index of some classes only says so
            info["classes"] = sorted(self.classes)
        return {**self.splits, "info": info}


JPEG_MASK_THRESHOLD = 127  # JPEG masks: compression leaves values near 0 and 255 around every edge


def mask_threshold_for(mask: Path) -> int:
    """The index's threshold for a mask file: above half range for JPEG, above 0 otherwise."""
    return JPEG_MASK_THRESHOLD if mask.suffix.lower() in (".jpg", ".jpeg") else 0


def find_folder(root: Path, *names: str, depth: int = 3, prefer: tuple[str, ...] = ()
                ) -> tuple[Path | None, list[Path]]:
    """The folder at or below ``root`` (up to ``depth`` levels down) that holds every one of the
    sub-folders ``names``, as downloads often nest a dataset in folders of its own name; and
    the other such folders at the same depth. Several matches (a benchmark bundle holding
    several datasets, or one dataset in two formats) are narrowed to those whose path
    contains the first of ``prefer`` (case-insensitive) that any contains; if that leaves
    more than one, the user must choose."""
    root = Path(root)
    level = [root]
    for _ in range(depth + 1):
        found = [folder for folder in level if all((folder / name).is_dir() for name in names)]
        if found:
            break
        level = [sub for folder in level for sub in sorted(folder.iterdir())
                 if sub.is_dir() and not sub.name.startswith(".")]
    else:
        return None, []
    chosen = found
    for fragment in prefer:
        matching = [f for f in found if fragment.lower() in f.relative_to(root).as_posix().lower()]
        if matching:
            chosen = matching
            break
    if len(chosen) > 1:
        listed = ", ".join(str(f.relative_to(root)) or "." for f in chosen)
        raise UserError(f"{root} holds several folders with {' and '.join(n + '/' for n in names)}: {listed}; "
                        f"give the one to index as the root")
    return chosen[0], [f for f in found if f != chosen[0]]


def add_pairs(index: Index, images: Path | list[Path], masks: Path, cls: str, mask_stem: Callable[[str], str] = str,
              mask_threshold: float | None = None) -> None:
    """Add every image of the folder(s) ``images`` as an anomalous test item with its mask from
    ``masks``, paired by name: the mask of ``x.jpg`` is ``mask_stem("x")`` with any image
    suffix. Never by position, as sorted-list pairing goes silently wrong after one stray
    file. Images without a mask and masks without an image are counted as left out. The
    threshold defaults to the mask's own (``item``)."""
    files = images_in(masks)
    by_stem = {m.stem: m for m in files}
    index.skip(f"masks in {masks.relative_to(index.root)} sharing a name with another (b.jpg beside b.png)",
               len(files) - len(by_stem))
    used = set()
    for folder in images if isinstance(images, list) else [images]:
        for image in images_in(folder):
            mask = by_stem.get(mask_stem(image.stem))
            if mask is None:
                index.skip(f"images in {folder.relative_to(index.root)} without a mask")
                continue
            used.add(mask.stem)
            index.add("test", cls, image, 1, mask, "anomaly", mask_threshold)
    index.skip(f"masks in {masks.relative_to(index.root)} without an image", len(by_stem) - len(used))


def suffixed_masks(folder: Path, suffix: str, masks: Path | None = None) -> list[tuple[Path, Path | None]]:
    """The images of ``folder``, each with its mask ``<stem><suffix>.*`` from ``masks`` (default:
    among the images themselves, as KolektorSDD keeps them), or None."""
    files = images_in(folder)
    candidates = files if masks is None else images_in(masks) if masks.is_dir() else []
    by_stem = {f.stem.removesuffix(suffix): f for f in candidates if f.stem.endswith(suffix)}
    return [(f, by_stem.get(f.stem)) for f in files if not f.stem.endswith(suffix)]


def marks_anything(mask: Path) -> bool:
    """Whether a mask marks any pixel: the label of the sets that give every image a mask,
    empty when the image is normal (KolektorSDD, KolektorSDD2)."""
    return bool(load_mask(mask, mask_threshold_for(mask)).any())


POLYP_LAYOUTS = (("images", "masks"), ("Original", "Ground Truth"), ("Original", "Ground_Truth"))


def polyp_index(index: Index, cls: str, mask_threshold: float | None = None, prefer: tuple[str, ...] = ()) -> dict:
    """The segmentation sets whose images are all anomalous, found as an image folder beside a
    mask folder (``POLYP_LAYOUTS``) at the root or up to three levels down (``find_folder``,
    with ``prefer``); masks paired by name (``add_pairs``)."""
    for images, masks in POLYP_LAYOUTS:
        folder, others = find_folder(index.root, images, masks, prefer=prefer)
        if folder is not None:
            log.info("reading %s and %s", folder / images, folder / masks)
            add_pairs(index, folder / images, folder / masks, cls, mask_threshold=mask_threshold)
            for other in others:
                index.skip(f"images of another copy or dataset in {other.relative_to(index.root)}/",
                           count_images(other / images))
            return index.meta()
    layouts = " or ".join(f"{i}/ with {m}/" for i, m in POLYP_LAYOUTS)
    raise UserError(f"{index.root} holds no {index.dataset} images: expected {layouts} (up to three levels down)")


def mvtec_layout_index(root: Path, classes: list[str] | None = None, expected: list[str] | None = None,
                       dataset: str = "mvtec") -> dict:
    """Index ``cls/{train,test}/{defect}/img`` with masks in ``cls/ground_truth/{defect}/``.

    Serves MVTec AD, MPDD, BTAD, DTD-Synthetic, the SDD crops and synthetic data. Classes are
    the folders with a ``test/`` subfolder; a missing standard class is logged unless ``classes``
    chose some. Anomalous images keep no mask where there is none (image-level ground truth).
    """
    idx = Index(root, dataset, classes)
    folders = sorted(p for p in idx.root.iterdir() if (p / "test").is_dir() and not p.name.startswith("."))
    if not folders:
        raise UserError(f"{idx.root} has no <class>/test folders: not an MVTec-style dataset")
    lacking = sorted(set(expected or ()) - {f.name for f in folders})
    if lacking and not classes:
        log.warning("%s lacks the standard classes %s", idx.root, lacking)
    for folder in folders:
        for split in ("train", "test"):
            split_dir = folder / split
            if not split_dir.is_dir():
                continue
            for defect_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                normal = is_good(defect_dir.name)
                for image in images_in(defect_dir):
                    mask = None if normal else find_mask(folder / "ground_truth" / defect_dir.name, image)
                    idx.add(split, folder.name, image, 0 if normal else 1, mask, defect_dir.name)
    return idx.meta()


def visa_index(root: Path, classes: list[str] | None = None, csv_name: str = "split_csv/1cls.csv") -> dict:
    """Index VisA from its ``split_csv/1cls.csv`` (columns object, split, label, image, mask)."""
    root = Path(root)
    table = root / csv_name
    if not table.is_file():
        raise UserError(f"{table} not found: is {root} the VisA root (prepared with its split_csv)?")
    meta: dict = {"train": {}, "test": {}}
    with open(table, newline="", encoding="utf-8-sig") as handle:  # -sig: as spreadsheet programs save it
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
            label = (row["label"] or "").strip().casefold()
            if label not in ("normal", "anomaly"):
                raise UserError(f"{table}:{line}: label must be normal or anomaly, got {row['label']!r}")
            anomaly = int(label == "anomaly")
            meta[row["split"]].setdefault(cls, []).append({
                "img_path": row["image"], "mask_path": row["mask"] if anomaly else "",
                "cls_name": cls, "specie_name": "", "anomaly": anomaly})
    if not meta["test"]:
        raise UserError(f"{table} lists no test images" + (f" of {classes}" if classes else ""))
    meta["info"] = {"dataset": "visa", "skipped": {}}
    return meta


def write_meta(root: Path, meta: dict) -> Path:
    """Write ``root/meta.json`` atomically and log a summary, with the files left out."""
    path = Path(root) / "meta.json"
    save_json(path, meta)
    for split in ("train", "test"):
        by_class = meta.get(split, {})
        count = sum(len(v) for v in by_class.values())
        anomalous = sum(row["anomaly"] for v in by_class.values() for row in v)
        log.info("%s: %d classes, %d images (%d normal, %d anomalous)", split, len(by_class), count,
                 count - anomalous, anomalous)
    for reason, count in meta.get("info", {}).get("skipped", {}).items():
        log.info("left out %d: %s", count, reason)
    log.info("wrote %s", path)
    return path


TRAIN_FOLDER = "train"  # in a class folder: train/good/ holds normal training images (the few-shot pool)


def folder_index(root: Path, class_name: str | None = None, train_good: Path | None = None) -> dict:
    """Index a plain layout: ``good/`` plus one folder per defect type, masks optional in
    ``ground_truth/<defect>/<stem>_mask.*`` or ``<stem>.*``, and optionally ``train/good/`` with
    normal images for the ``train`` split (what ``k_shot`` draws reference images from).

    ``root`` is one class (named ``class_name`` or after the folder) when it
    has a ``good/`` folder; otherwise every subfolder with ``good/`` is a class.
    The rest goes into the ``test`` split. ``train_good``: a folder of normal training
    images for a one-class ``root``, instead of (or besides) its ``train/good/``.
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
    if train_good is not None and len(class_dirs) > 1:
        raise UserError(f"train_good names the training images of one class, but {root} holds {len(class_dirs)} "
                        f"classes; give each class folder a train/good/ folder instead", field="train_good")
    meta: dict = {"train": {}, "test": {}}
    for cls, folder in class_dirs.items():
        rows = []
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in ("ground_truth", TRAIN_FOLDER)
                          and not p.name.startswith(".")):
            normal = is_good(sub.name)
            for image in images_in(sub):
                mask = None if normal else find_mask(folder / "ground_truth" / sub.name, image)
                rows.append(item(root, image, mask, cls, sub.name, 0 if normal else 1))
        if not rows:
            raise UserError(f"class folder {folder} holds no images")
        meta["test"][cls] = rows
        training = [sub for g in GOOD_NAMES if (sub := folder / TRAIN_FOLDER / g).is_dir()]
        training += [Path(train_good)] if train_good is not None else []
        train_rows = [_train_row(root, image, cls) for sub in training for image in _good_images(sub)]
        if train_rows:
            meta["train"][cls] = train_rows
    return meta


def _good_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"training images folder {folder} not found", field="train_good")
    found = images_in(folder)
    if not found:
        raise UserError(f"training images folder {folder} holds no images", field="train_good")
    return found


def _train_row(root: Path, image: Path, cls: str) -> dict:
    """A normal training image, its path relative to ``root`` where it lies below it."""
    inside = image.resolve().is_relative_to(root.resolve())
    path = image.resolve().relative_to(root.resolve()).as_posix() if inside else str(image.resolve())
    return {"img_path": path, "mask_path": "", "cls_name": cls, "specie_name": "good", "anomaly": 0}


_LABELS = {"0": 0, "1": 1, "normal": 0, "good": 0, "ok": 0, "anomaly": 1, "anomalous": 1, "bad": 1, "defect": 1,
           "ng": 1}


SPLITS = ("test", "train")


def csv_index(root: Path, table: Path) -> dict:
    """Index a CSV with columns ``image,mask,label,class`` (mask may be empty; label 0/1 or
    normal/anomaly) and optionally ``split``: ``test`` (the default) or ``train``, for normal
    training images (what ``k_shot`` draws from); paths are relative to ``root`` or absolute."""
    root, table = Path(root), Path(table)
    if not table.is_file():
        raise UserError(f"{table} not found")
    meta: dict = {"train": {}, "test": {}}
    with open(table, newline="", encoding="utf-8-sig") as handle:  # -sig: as spreadsheet programs save it
        reader = csv.DictReader(handle)
        missing = {"image", "mask", "label", "class"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{table} lacks the columns {sorted(missing)} (expected image,mask,label,class)")
        for line, row in enumerate(reader, start=2):
            if not row["image"] or not row["class"]:
                raise UserError(f"{table}:{line}: every row needs an image and a class")
            label = _LABELS.get(str(row["label"]).strip().lower())
            if label is None:
                raise UserError(f"{table}:{line}: label {row['label']!r} is not 0/1 or normal/anomaly")
            split = str(row.get("split") or "test").strip().lower()
            if split not in SPLITS:
                raise UserError(f"{table}:{line}: split {row['split']!r} is not test or train")
            if split == "train" and label:
                raise UserError(f"{table}:{line}: the train split holds normal images only (label 0)")
            meta[split].setdefault(row["class"], []).append({
                "img_path": row["image"], "mask_path": row["mask"] or "", "cls_name": row["class"],
                "specie_name": "good" if label == 0 else "defect", "anomaly": label})
    if not meta["test"]:
        raise UserError(f"{table} lists no images")
    return meta

