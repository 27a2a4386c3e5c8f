"""ISIC 2016 (ISBI 2016 challenge, part 1: lesion segmentation): every test image is anomalous.

Official download (two zips of the test set):

    ISBI2016_ISIC_Part1_Test_Data/ISIC_0000003.jpg                   379 images
    ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000003_Segmentation.png  masks, 0/255
    ISBI2016_ISIC_Part1_Training_Data/, ..._Training_GroundTruth/    900 lesions: left out

The copy the zero-shot literature evaluated:

    skin/test/<folder>/ISIC_0000003.jpg
    skin/ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000003_Segmentation.png

Masks are paired by name (image stem + ``_Segmentation``). The training set
is all lesions, so it gives no normal training images and is left out. Pixel
metrics only: image metrics are undefined without normal images. Class
``skin``.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..indexing import Index, add_pairs, images_in

CLASS = "skin"
TEST, TRUTH = "ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth"


def _mask_stem(stem: str) -> str:
    return f"{stem}_Segmentation"


def index(root: Path, classes: list[str] | None = None) -> dict:
    root = Path(root)
    idx = Index(root, "isic", classes)
    if (root / TEST).is_dir() and (root / TRUTH).is_dir():
        add_pairs(idx, root / TEST, root / TRUTH, CLASS, _mask_stem)
        for training in ("ISBI2016_ISIC_Part1_Training_Data",):
            if (root / training).is_dir():
                idx.skip(f"training lesions in {training}/ (no normal images among them)",
                         len(images_in(root / training)))
    elif (root / CLASS / "test").is_dir() and (root / CLASS / TRUTH).is_dir():
        folders = sorted(p for p in (root / CLASS / "test").iterdir() if p.is_dir())
        add_pairs(idx, folders, root / CLASS / TRUTH, CLASS, _mask_stem)
    else:
        raise UserError(f"{root} holds neither {TEST}/ with {TRUTH}/ (the official ISIC 2016 test set) nor "
                        f"skin/test/ with skin/{TRUTH}/ (the literature's copy)")
    return idx.meta()
