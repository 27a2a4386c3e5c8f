"""CVC-ColonDB (colonoscopy polyps): every image is anomalous, 380 frames at 574×500.

As distributed with the polyp-segmentation benchmarks (also nested, e.g.
``TestDataset/CVC-ColonDB/``):

    images/1.png ... 380.png
    masks/1.png ... 380.png                masks named as their frames

An ``Original``/``Ground Truth`` layout like CVC-ClinicDB's is read too. In a
bundle of several datasets (``TestDataset/``), the folder whose path names
ColonDB is read. Masks are paired by name. Pixel metrics only; class ``colon``, as in the
literature's tables.
"""
from __future__ import annotations

from pathlib import Path

from ..indexing import Index, polyp_index

CLASS = "colon"


def index(root: Path, classes: list[str] | None = None) -> dict:
    return polyp_index(Index(root, "colondb", classes), CLASS, prefer=("colondb",))
