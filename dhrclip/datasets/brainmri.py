"""BrainMRI (Kaggle "Brain MRI Images for Brain Tumor Detection"): image-level labels only.

    brain_tumor_dataset/yes/Y1.jpg          tumour (anomalous); .jpg, .jpeg and .JPG mixed,
    brain_tumor_dataset/no/1 no.jpeg        normal; names with spaces
    yes/, no/                               byte-identical duplicates of the two folders above

The download holds every image twice: the top-level ``yes/`` and ``no/`` are
left out (counted) when ``brain_tumor_dataset/`` is there, and used when it is
the only copy. No masks and no train split; class ``brain``, as in the
literature's tables.
"""
from __future__ import annotations

from pathlib import Path

from ..indexing import Index, images_in

CLASS = "brain"


def index(root: Path, classes: list[str] | None = None) -> dict:
    idx = Index(root, "brainmri", classes)
    inner = Path(root) / "brain_tumor_dataset"
    source = inner if (inner / "yes").is_dir() and (inner / "no").is_dir() else Path(root)
    if source == inner:
        for name in ("yes", "no"):
            if (Path(root) / name).is_dir():
                idx.skip(f"duplicate images in {name}/ (the same files as brain_tumor_dataset/{name}/)",
                         len(images_in(Path(root) / name)))
    for name, anomaly in (("no", 0), ("yes", 1)):
        if (source / name).is_dir():
            for image in images_in(source / name):
                idx.add("test", CLASS, image, anomaly, specie="tumor" if anomaly else "good")
    return idx.meta()
