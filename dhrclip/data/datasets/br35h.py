"""Br35H (Kaggle "Br35H :: Brain Tumor Detection 2020"): image-level labels only.

    yes/y0.jpg ... y1499.jpg               tumour (anomalous)
    no/no0.jpg ... no1499.jpg              normal
    pred/pred0.jpg ...                     unlabelled images for prediction: left out
    Br35H-Mask-RCNN/                       a detection version (in some downloads): left out

Only ``yes/`` and ``no/`` are labelled (found at the root or a level or two
down), so every other folder beside them is counted as left out, not guessed
at. No masks and no train split; class ``brain``, as in the literature's
tables.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import UserError
from ..indexing import Index, count_images, find_folder, images_in

CLASS = "brain"


def index(root: Path, classes: list[str] | None = None) -> dict:
    idx = Index(root, "br35h", classes)
    folder, _ = find_folder(idx.root, "yes", "no")
    if folder is None:
        raise UserError(f"{idx.root} has no yes/ and no/ folders (Br35H)")
    for name, anomaly in (("no", 0), ("yes", 1)):
        for image in images_in(folder / name):
            idx.add("test", CLASS, image, anomaly, specie="tumor" if anomaly else "good")
    for other in sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in ("yes", "no")
                        and not p.name.startswith(".")):
        idx.skip(f"unlabelled or other-task images in {other.name}/", count_images(other))
    return idx.meta()
