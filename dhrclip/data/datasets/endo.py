"""Endo: the EndoTect 2020 polyp-segmentation test set, every image anomalous (200 images).

    EndoTect_2020_Segmentation_Test_Dataset/images/<name>.jpg
    EndoTect_2020_Segmentation_Test_Dataset/masks/<name>.<jpg|png>   masks named as their images

also found at the root or a level or two down (in a bundle of several
datasets, the folder whose path names Endo). JPEG masks are binarised at
127, lossless ones above 0. Masks are paired by name. Pixel metrics only;
class ``colon``, as in the literature's tables.
"""
from __future__ import annotations

from pathlib import Path

from ..indexing import Index, polyp_index

CLASS = "colon"


def index(root: Path, classes: list[str] | None = None) -> dict:
    return polyp_index(Index(root, "endo", classes), CLASS, prefer=("endo",))
