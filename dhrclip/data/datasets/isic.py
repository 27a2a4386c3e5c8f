"""ISIC 2016 (ISBI 2016 challenge, part 1: lesion segmentation): every test image is anomalous.

Official download (two zips of the test set):

    ISBI2016_ISIC_Part1_Test_Data/ISIC_0000003.jpg                   379 images
    ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000003_Segmentation.png  masks, 0/255
    ISBI2016_ISIC_Part1_Training_Data/, ..._Training_GroundTruth/    900 lesions: left out

The copy the zero-shot literature evaluated:

    skin/test/<folder>/ISIC_0000003.jpg          (a folder named ``good`` holds normal images)
    skin/ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000003_Segmentation.png

Either is found at the root or a level or two down. Masks are paired by name
(image stem + ``_Segmentation``). The training set is all lesions, so it gives
no normal training images and is left out. With lesions alone, image metrics
are undefined and pixel metrics are reported. Class ``skin``.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import UserError
from ..indexing import Index, add_pairs, count_images, find_folder, images_in

CLASS = "skin"
TEST, TRUTH = "ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth"
TRAINING = "ISBI2016_ISIC_Part1_Training_Data"


def _mask_stem(stem: str) -> str:
    return f"{stem}_Segmentation"


def index(root: Path, classes: list[str] | None = None) -> dict:
    idx = Index(root, "isic", classes)
    official, _ = find_folder(idx.root, TEST, TRUTH)
    copy, _ = find_folder(idx.root, "test", TRUTH, prefer=(CLASS,))
    if official is not None:
        add_pairs(idx, official / TEST, official / TRUTH, CLASS, _mask_stem)
        idx.skip(f"training lesions in {TRAINING}/ (no normal images among them)",
                 count_images(official / TRAINING))
    elif copy is not None:
        folders = sorted(p for p in (copy / "test").iterdir() if p.is_dir() and not p.name.startswith("."))
        for good in (f for f in folders if f.name == "good"):
            for image in images_in(good):
                idx.add("test", CLASS, image, 0, specie="good")
        add_pairs(idx, [f for f in folders if f.name != "good"], copy / TRUTH, CLASS, _mask_stem)
    else:
        raise UserError(f"{idx.root} holds neither {TEST}/ with {TRUTH}/ (the official ISIC 2016 test set) nor "
                        f"skin/test/ with skin/{TRUTH}/ (the literature's copy)")
    return idx.meta()
