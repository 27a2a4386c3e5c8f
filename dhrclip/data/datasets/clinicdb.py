"""CVC-ClinicDB (colonoscopy polyps): every image is anomalous, 612 frames at 384×288.

Official release (TIFF):

    Original/1.tif ... 612.tif             frames
    Ground Truth/1.tif ... 612.tif         masks named as their frames (3 channels; also "Ground_Truth")

Copies in PNG, detected by their folder names (also nested a level or two down):

    PNG/Original/1.png, PNG/Ground Truth/1.png      the Kaggle copy
    images/1.png, masks/1.png                       the copy the zero-shot literature used

Where several are found (the Kaggle copy's ``PNG/`` and ``TIF/``, or a
benchmark bundle holding several datasets), the one whose path names ClinicDB
is read, else the PNG one; the others are counted as left out. Masks are
paired by name, never by position. Pixel metrics only; class ``colon``, as in
the literature's tables.
"""
from __future__ import annotations

from pathlib import Path

from ..indexing import Index, polyp_index

CLASS = "colon"


def index(root: Path, classes: list[str] | None = None) -> dict:
    return polyp_index(Index(root, "clinicdb", classes), CLASS, prefer=("clinicdb", "png"))
