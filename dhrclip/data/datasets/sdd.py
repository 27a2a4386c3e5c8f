"""SDD: KolektorSDD's commutator images cropped into the MVTec AD layout, as the zero-shot
literature evaluated them (the crops are distributed, not made here).

    electrical commutators/train/good/*.png            (AnomalyCLIP's copy; a folder name with a space)
    electrical commutators/test/{good,<defect>}/*.png
    electrical commutators/ground_truth/<defect>/<stem>_mask.png  (or <stem>.png)

AdaCLIP's preparation script (three horizontal bands per image) names its
class folder ``SDD``; any class folder with a ``test/`` subfolder is read. For the
uncropped release, use ``ksdd``.
"""
from __future__ import annotations

from pathlib import Path

from ..indexing import mvtec_layout_index


def index(root: Path, classes: list[str] | None = None) -> dict:
    return mvtec_layout_index(root, classes, dataset="sdd")
