"""BTAD (beanTech): 3 classes in the MVTec AD layout with ``ok``/``ko`` folders.

    <class>/train/ok/0000.bmp                      classes 01, 02, 03; images .bmp or .png
    <class>/test/{ok,ko}/0000.bmp
    <class>/ground_truth/ko/0000.png               masks named as their images (any image suffix)
"""
from __future__ import annotations

from pathlib import Path

from ..indexing import BTAD_CLASSES, mvtec_layout_index


def index(root: Path, classes: list[str] | None = None) -> dict:
    return mvtec_layout_index(root, classes, BTAD_CLASSES, dataset="btad")
