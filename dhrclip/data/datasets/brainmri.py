"""BrainMRI (Kaggle "Brain MRI Images for Brain Tumor Detection"): image-level labels only.

    brain_tumor_dataset/yes/Y1.jpg          tumour (anomalous); .jpg, .jpeg and .JPG mixed,
    brain_tumor_dataset/no/1 no.jpeg        normal; names with spaces
    yes/, no/                               duplicates of the two folders above

The download holds every image twice: the top-level ``yes/`` and ``no/`` are
left out (counted) when ``brain_tumor_dataset/`` is there, and used when they
are the only copy (each found at the root or a level or two down). No masks
and no train split; class ``brain``, as in the literature's tables.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import UserError
from ..indexing import Index, count_images, find_folder, images_in

CLASS = "brain"


def index(root: Path, classes: list[str] | None = None) -> dict:
    idx = Index(root, "brainmri", classes)
    outer, _ = find_folder(idx.root, "brain_tumor_dataset")
    source: Path | None
    if outer is not None:
        source = outer / "brain_tumor_dataset"
        for name in ("yes", "no"):
            idx.skip(f"duplicate images in {name}/ (the same files as brain_tumor_dataset/{name}/)",
                     count_images(outer / name))
    else:
        source, _ = find_folder(idx.root, "yes", "no")
    if source is None:
        raise UserError(f"{idx.root} has neither brain_tumor_dataset/ nor yes/ and no/ folders (BrainMRI)")
    for name, anomaly in (("no", 0), ("yes", 1)):
        if (source / name).is_dir():
            for image in images_in(source / name):
                idx.add("test", CLASS, image, anomaly, specie="tumor" if anomaly else "good")
    return idx.meta()
