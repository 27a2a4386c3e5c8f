"""Br35H (Kaggle "Br35H :: Brain Tumor Detection 2020"): image-level labels only.

    yes/y0.jpg ... y1499.jpg               tumour (anomalous)
    no/no0.jpg ... no1499.jpg              normal
    pred/pred0.jpg ...                     unlabelled images for prediction: left out
    Br35H-Mask-RCNN/                       a detection version (newer downloads): left out

Only ``yes/`` and ``no/`` are labelled, so everything else is counted as left
out, not guessed at. No masks and no train split; class ``brain``, as in the
literature's tables.
"""
from __future__ import annotations

from pathlib import Path

from ..indexing import Index, images_in

CLASS = "brain"


def index(root: Path, classes: list[str] | None = None) -> dict:
    root = Path(root)
    idx = Index(root, "br35h", classes)
    for name, anomaly in (("no", 0), ("yes", 1)):
        if (root / name).is_dir():
            for image in images_in(root / name):
                idx.add("test", CLASS, image, anomaly, specie="tumor" if anomaly else "good")
    for other in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in ("yes", "no")):
        idx.skip(f"unlabelled or other-task images in {other.name}/",
                 sum(1 for f in other.rglob("*") if f.is_file() and f.suffix.lower() in (".jpg", ".jpeg", ".png")))
    return idx.meta()
