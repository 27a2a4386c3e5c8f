"""Eyecandies (synthetic sweets): 10 classes, each sample rendered under 6 lightings.

    <Class>/train/data/000_image_5.png         normal training samples;
    <Class>/test_public/data/00_image_5.png    image_0..image_5 are the lightings
    <Class>/test_public/data/00_mask.png       the union of the sample's defect masks
    <Class>/test_public/data/00_metadata.yaml  "anomalous: 0|1": the image label
    <Class>/test_public/data/00_depth.png, _normals.png, _*_mask.png, ...   not used
    <Class>/val/, <Class>/test_private/        validation and unlabelled test sets: left out

Class folders are CandyCane, ChocolateCookie, ChocolatePraline, Confetto,
GummyBear, HazelnutTruffle, LicoriceSandwich, Lollipop, Marshmallow,
PeppermintCandy. ``image_5`` (all lights on) is the image indexed, as in the
dataset's own anomalib export. A test sample's label comes from its metadata
(train samples have masks too, empty ones); train samples are normal, with or
without metadata.
"""
from __future__ import annotations

import re
from pathlib import Path

from ...errors import UserError
from ..indexing import Index, count_images

IMAGE = "image_5"
_ANOMALOUS = re.compile(r"^anomalous:\s*(\w+)", re.MULTILINE)


def _label(metadata: Path) -> int | None:
    if not metadata.is_file():
        return None
    try:
        found = _ANOMALOUS.search(metadata.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{metadata} is not a readable metadata file ({exc})") from exc
    if found is None:
        return None
    return 1 if found.group(1).lower() in ("1", "true") else 0


def index(root: Path, classes: list[str] | None = None) -> dict:
    idx = Index(root, "eyecandies", classes)
    for folder in sorted(p for p in idx.root.iterdir() if (p / "test_public").is_dir()):
        for phase, split in (("train", "train"), ("test_public", "test")):
            data = folder / phase / "data"
            for image in sorted(data.glob(f"*_{IMAGE}.png")) if data.is_dir() else []:
                sample = image.name.removesuffix(f"_{IMAGE}.png")
                label = _label(data / f"{sample}_metadata.yaml")
                if split == "train" and label is None:
                    label = 0  # the training set is normal by construction
                if label is None:
                    idx.skip(f"{phase} samples without a metadata label", cls=folder.name)
                elif split == "train" and label:
                    idx.skip("anomalous samples of train/", cls=folder.name)
                elif label and not (data / f"{sample}_mask.png").is_file():
                    idx.skip(f"anomalous {phase} samples without a _mask.png", cls=folder.name)
                elif label:
                    idx.add(split, folder.name, image, 1, data / f"{sample}_mask.png", "anomalous")
                else:
                    idx.add(split, folder.name, image, 0, specie="good")
        for unused in ("val", "test_private"):
            idx.skip(f"{unused}/ samples" + (" (unlabelled)" if "private" in unused else ""),
                     count_images(folder / unused, f"*_{IMAGE}.png"), cls=folder.name)
    return idx.meta()
