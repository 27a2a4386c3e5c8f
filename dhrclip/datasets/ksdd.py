"""KolektorSDD (electrical commutators): an image is anomalous when its mask is not empty.

    kos01/Part0.jpg, kos01/Part0_label.bmp      50 folders kos01..kos50 of 8 parts each;
    ...                                         every image has a ``_label`` mask, empty when normal

There is no official train/test split: every image goes to the test split.
Labels come from the masks alone, so each mask is read while indexing. One
class, ``electrical_commutators``.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..indexing import Index, images_in, mask_threshold_for
from ..images import load_mask

CLASS = "electrical_commutators"


def index(root: Path, classes: list[str] | None = None) -> dict:
    root = Path(root)
    idx = Index(root, "ksdd", classes)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("kos"))
    if not folders:
        raise UserError(f"{root} has no kos01 ... kos50 folders (KolektorSDD)")
    for folder in folders:
        files = images_in(folder)
        masks = {f.stem.removesuffix("_label"): f for f in files if f.stem.endswith("_label")}
        for image in (f for f in files if not f.stem.endswith("_label")):
            mask = masks.get(image.stem)
            if mask is None:
                idx.skip("images without a _label mask")
                continue
            if load_mask(mask, mask_threshold_for(mask)).any():
                idx.add("test", CLASS, image, 1, mask, "defect", mask_threshold_for(mask))
            else:
                idx.add("test", CLASS, image, 0, specie="good")
    return idx.meta()
