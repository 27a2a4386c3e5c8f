"""MPDD (metal parts): 6 classes in the MVTec AD layout.

    <class>/train/good/000.png
    <class>/test/{good,<defect>}/000.png
    <class>/ground_truth/<defect>/000_mask.png
"""
from __future__ import annotations

from pathlib import Path

from ..indexing import MPDD_CLASSES, mvtec_layout_index


def index(root: Path, classes: list[str] | None = None) -> dict:
    return mvtec_layout_index(root, classes, MPDD_CLASSES, dataset="mpdd")
