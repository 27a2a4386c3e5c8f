"""KolektorSDD (electrical commutators): an image is anomalous when its mask is not empty.

    kos01/Part0.jpg, kos01/Part0_label.bmp      50 folders kos01..kos50 of 8 parts each;
    ...                                         every image has a ``_label`` mask, empty when normal

(the ``kos`` folders at the root or one level down). There is no official
train/test split: every image goes to the test split. Labels come from the
masks alone, so each mask is read while indexing. One class,
``electrical_commutators``.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import UserError
from ..indexing import Index, marks_anything, suffixed_masks

CLASS = "electrical_commutators"


def _parts(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("kos"))


def index(root: Path, classes: list[str] | None = None) -> dict:
    idx = Index(root, "ksdd", classes)
    folders = _parts(idx.root) or next((_parts(sub) for sub in sorted(idx.root.iterdir())
                                        if sub.is_dir() and _parts(sub)), [])
    if not folders:
        raise UserError(f"{idx.root} has no kos01 ... kos50 folders (KolektorSDD), here or one level down")
    for folder in folders:
        for image, mask in suffixed_masks(folder, "_label"):
            if mask is None:
                idx.skip("images without a _label mask")
            elif marks_anything(mask):
                idx.add("test", CLASS, image, 1, mask, "defect")
            else:
                idx.add("test", CLASS, image, 0, specie="good")
    return idx.meta()
