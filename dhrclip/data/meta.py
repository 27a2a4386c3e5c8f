"""The meta.json index (docs/method.md §8): its rows as typed items, read and checked before
any work starts."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

ITEM_KEYS = ("img_path", "mask_path", "cls_name", "specie_name", "anomaly")


@dataclass(frozen=True)
class Item:
    """One row of a meta.json index, with paths resolved against the dataset root."""

    image: Path
    masks: tuple[Path, ...]  # empty: no mask; several: their union
    cls_name: str
    specie_name: str
    anomaly: int
    mask_threshold: float = 0  # a mask pixel above this is anomalous (about 127 for JPEG masks)


def read_meta(root: Path, split: str = "test", classes: list[str] | None = None) -> dict[str, list[Item]]:
    """Items of ``root/meta.json`` for ``split``, by class, validated (docs/method.md §8)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset root not found: {root}")
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"{meta_path} not found; index the dataset first: dhrclip-index NAME --root {root} (NAME: "
                        f"mvtec, visa, ... or folder for your own images), or its script in generate_dataset_json/")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{meta_path} is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get(split), dict):
        raise UserError(f"{meta_path} has no '{split}' section of the form {{class: [item, ...]}}")
    section = meta[split]
    wanted = classes or sorted(section)
    unknown = [c for c in wanted if c not in section]
    if unknown:
        raise UserError(f"{meta_path}: classes {unknown} are not in its '{split}' section "
                        f"(it has {sorted(section)})")
    result: dict[str, list[Item]] = {}
    for cls in wanted:
        rows = section[cls]
        if not isinstance(rows, list) or not rows:
            raise UserError(f"{meta_path}: class '{cls}' of '{split}' has no items")
        result[cls] = [_item(root, meta_path, split, cls, i, row) for i, row in enumerate(rows)]
    _check_files(meta_path, split, result)
    return result


def _check_files(meta_path: Path, split: str, by_class: dict[str, list[Item]]) -> None:
    """Fail before any work starts when a listed image or mask does not exist."""
    for cls, items in by_class.items():
        for i, item in enumerate(items):
            for path, what in ((item.image, "image"), *((mask, "mask") for mask in item.masks)):
                if not path.is_file():
                    raise UserError(f"{what} not found: {path} (listed in {meta_path} as {split}/{cls}[{i}])")


def _item(root: Path, meta_path: Path, split: str, cls: str, index: int, row: object) -> Item:
    where = f"{meta_path}: {split}/{cls}[{index}]"
    if not isinstance(row, dict) or any(k not in row for k in ITEM_KEYS):
        raise UserError(f"{where} is not an item with keys {', '.join(ITEM_KEYS)}: {str(row)[:120]}")
    if row["anomaly"] not in (0, 1, True, False):
        raise UserError(f"{where}: 'anomaly' must be 0 or 1, got {row['anomaly']!r}")
    if not isinstance(row["img_path"], str) or not row["img_path"]:
        raise UserError(f"{where}: 'img_path' must be a non-empty path")
    masks = row["mask_path"]
    if isinstance(masks, str):
        masks = [masks] if masks else []
    if not isinstance(masks, list) or not all(isinstance(m, str) and m for m in masks):
        raise UserError(f"{where}: 'mask_path' must be a path, a list of paths (read as their union) or '' for none")
    threshold = row.get("mask_threshold", 0)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold < 0:
        raise UserError(f"{where}: 'mask_threshold' must be a number >= 0 (a mask pixel above it is anomalous), "
                        f"got {threshold!r}")
    return Item(image=root / row["img_path"], masks=tuple(root / m for m in masks), cls_name=str(row["cls_name"]),
                specie_name=str(row["specie_name"]), anomaly=int(row["anomaly"]), mask_threshold=threshold)


def has_masks(items: list[Item]) -> bool:
    """True when every anomalous item has a mask (pixel metrics and training need them)."""
    return all(item.masks for item in items if item.anomaly)
