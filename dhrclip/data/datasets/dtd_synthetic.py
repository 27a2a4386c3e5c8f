"""DTD-Synthetic: 12 texture classes from the Describable Textures Dataset with synthetic
defects, in the MVTec AD layout.

    <class>/train/good/*.png                   e.g. Blotchy_099, Woven_001
    <class>/test/{good,bad}/*.png
    <class>/ground_truth/bad/<stem>_mask.png   (or <stem>.png)
"""
from __future__ import annotations

from pathlib import Path

from ..indexing import mvtec_layout_index

CLASSES = ["Blotchy_099", "Fibrous_183", "Marbled_078", "Matted_069", "Mesh_114", "Perforated_037",
           "Stratified_154", "Woven_001", "Woven_068", "Woven_104", "Woven_125", "Woven_127"]


def index(root: Path, classes: list[str] | None = None) -> dict:
    return mvtec_layout_index(root, classes, CLASSES, dataset="dtd_synthetic")
