"""VisA: 12 classes, indexed from the split file its preparation script writes.

    split_csv/1cls.csv                             columns object, split, label, image, mask
    <class>/Data/Images/{Normal,Anomaly}/0000.JPG  the images the CSV names
    <class>/Data/Masks/Anomaly/0000.png            masks of the anomalous ones (0 and a class value)

The train split holds the normal images the CSV assigns to training.
"""
from __future__ import annotations

from pathlib import Path

from ..indexing import visa_index


def index(root: Path, classes: list[str] | None = None) -> dict:
    return visa_index(root, classes)
