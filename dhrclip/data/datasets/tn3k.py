"""TN3K (thyroid nodules in ultrasound): every image holds a nodule.

    tn3k/test-image/0000.jpg ... (614)      the test split; also under "Thyroid Dataset/tn3k/"
    tn3k/test-mask/0000.jpg                 JPEG masks named as their images
    tn3k/trainval-image/, trainval-mask/    2879 training images, all with nodules: left out
    tn3k/tn3k-trainval*.json, label4*.csv   folds and nodule classes: not used

JPEG masks are binarised at 127 against their compression noise. Masks are
paired by name. Pixel metrics only; class ``thyroid``, as in the literature's
tables.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import UserError
from ..indexing import Index, add_pairs, count_images, find_folder

CLASS = "thyroid"


def index(root: Path, classes: list[str] | None = None) -> dict:
    idx = Index(root, "tn3k", classes)
    folder, _ = find_folder(idx.root, "test-image", "test-mask")
    if folder is None:
        raise UserError(f"{idx.root} has no test-image/ and test-mask/ folders (TN3K), here or up to three levels "
                        f"down")
    add_pairs(idx, folder / "test-image", folder / "test-mask", CLASS)
    idx.skip("trainval-image/ (training images, all with nodules)", count_images(folder / "trainval-image"))
    return idx.meta()
