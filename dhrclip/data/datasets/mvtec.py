"""MVTec AD: 15 classes.

    <class>/train/good/000.png                     normal training images
    <class>/test/good/000.png                      normal test images
    <class>/test/<defect>/000.png                  anomalous test images, one folder per defect type
    <class>/ground_truth/<defect>/000_mask.png     their masks, 0/255
"""
from __future__ import annotations

from pathlib import Path

from ..indexing import MVTEC_CLASSES, mvtec_layout_index


def index(root: Path, classes: list[str] | None = None) -> dict:
    return mvtec_layout_index(root, classes, MVTEC_CLASSES, dataset="mvtec")
