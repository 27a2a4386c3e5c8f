"""Kvasir-SEG (gastrointestinal polyps): every image is anomalous, 1000 images.

Official release (Kaggle copies nest it as ``Kvasir-SEG/Kvasir-SEG/``):

    Kvasir-SEG/images/cju0qkwl35piu0993l0dewei2.jpg
    Kvasir-SEG/masks/cju0qkwl35piu0993l0dewei2.jpg     JPEG masks, named as their images
    Kvasir-SEG/kavsir_bboxes.json                      boxes: not used

The polyp benchmarks' copy (``TestDataset/Kvasir/``, 100 images) has
``images/*.png`` and ``masks/*.png``. Both mask formats are binarised at 127:
the JPEG masks carry compression noise (values 1-7 and 248-254 around every
edge), and the PNG copies were converted from them with the noise kept.
In a bundle of several datasets, the folder whose path names Kvasir is read.
Masks are paired by name. Pixel metrics only; class ``colon``, as in the
literature's tables.
"""
from __future__ import annotations

from pathlib import Path

from ..indexing import JPEG_MASK_THRESHOLD, Index, polyp_index

CLASS = "colon"


def index(root: Path, classes: list[str] | None = None) -> dict:
    return polyp_index(Index(root, "kvasir", classes), CLASS, mask_threshold=JPEG_MASK_THRESHOLD,
                       prefer=("kvasir",))
