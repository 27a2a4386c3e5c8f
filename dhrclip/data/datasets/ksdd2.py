"""KolektorSDD2 (surface defects): an image is anomalous when its mask is not empty.

    train/10000.png, train/10000_GT.png     every image has a ``_GT`` mask, empty when normal
    test/20000.png,  test/20000_GT.png

also found a level or two down. Labels come from the masks alone, so each mask
is read while indexing. The train split holds ``train/``'s normal images; its
defective ones are left out (counted), as zero-shot testing uses ``test/``.
One class, ``ksdd2``.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import UserError
from ..indexing import Index, find_folder, marks_anything, suffixed_masks

CLASS = "ksdd2"


def index(root: Path, classes: list[str] | None = None) -> dict:
    idx = Index(root, "ksdd2", classes)
    folder, _ = find_folder(idx.root, "test")
    if folder is None:
        raise UserError(f"{idx.root} has no test/ folder: the KolektorSDD2 root holds train/ and test/")
    for split in ("train", "test"):
        for image, mask in suffixed_masks(folder / split, "_GT") if (folder / split).is_dir() else []:
            if mask is None:
                idx.skip(f"images in {split}/ without a _GT mask")
            elif not marks_anything(mask):
                idx.add(split, CLASS, image, 0, specie="good")
            elif split == "train":
                idx.skip("defective images of train/ (the train split holds normal images)")
            else:
                idx.add(split, CLASS, image, 1, mask, "defect")
    return idx.meta()
