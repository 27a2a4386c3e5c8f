"""HeadCT (Kaggle "Head CT - hemorrhage"): image-level labels only.

    head_ct/head_ct/000.png ... 199.png     the scans (the folder name is repeated)
    labels.csv                              header "id, hemorrhage" (note the space), 0/1;
                                            id N is the image N as three digits

(``labels.csv`` at the root or a level or two down, the scans beside it). The
labels live only in the CSV; a scan the CSV does not list, or a listed id
without its scan, is counted as left out. No masks and no train split; class
``brain``, as in the literature's tables.
"""
from __future__ import annotations

import csv
from pathlib import Path

from ...errors import UserError
from ..indexing import Index, images_in

CLASS = "brain"


def _labels(table: Path) -> dict[int, int]:
    labels = {}
    try:
        with open(table, newline="", encoding="utf-8-sig") as handle:
            for line, row in enumerate(csv.DictReader(handle), start=2):
                row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
                try:
                    labels[int(row["id"])] = int(row["hemorrhage"])
                except (KeyError, ValueError) as exc:
                    raise UserError(f"{table}:{line}: expected columns id, hemorrhage with integers ({exc})") from exc
                if labels[int(row["id"])] not in (0, 1):
                    raise UserError(f"{table}:{line}: hemorrhage must be 0 or 1, got {row['hemorrhage']}")
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{table} is not a readable CSV ({exc})") from exc
    return labels


def index(root: Path, classes: list[str] | None = None) -> dict:
    idx = Index(root, "headct", classes)
    table = next((t for pattern in ("labels.csv", "*/labels.csv", "*/*/labels.csv")
                  for t in sorted(idx.root.glob(pattern))), None)
    if table is None:
        raise UserError(f"no labels.csv in {idx.root}: the HeadCT root holds labels.csv and head_ct/head_ct/")
    labels = _labels(table)
    folder = table.parent
    while (folder / "head_ct").is_dir():  # head_ct/head_ct/
        folder = folder / "head_ct"
    found = set()
    for image in images_in(folder):
        key = int(image.stem) if image.stem.isascii() and image.stem.isdigit() else None
        if key not in labels:
            idx.skip("scans without a label in labels.csv")
            continue
        found.add(key)
        idx.add("test", CLASS, image, labels[key], specie="hemorrhage" if labels[key] else "good")
    idx.skip("ids of labels.csv without a scan", len(set(labels) - found))
    return idx.meta()
