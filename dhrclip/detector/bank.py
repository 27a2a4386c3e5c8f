"""Few-shot bank files (``ReferenceBank.save``, predict.py ``save_reference``): the one reader, and
the check that a bank answers for a model and grid.

The reader checks the file's every part: the metadata (format, settings, grid, image names) and
the tensors (one global and one tile table per tapped layer, all of one width, with an owner
index per row that names one of the bank's images); any damage ends in one ``UserError`` naming
the file and the part.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..config import FIXED_GRID, ModelConfig
from ..config.fields import whole
from ..core.fewshot import BANK_FORMAT, ReferenceBank
from ..core.grid import Grid
from ..errors import UserError
from .signature import BANK, Signature, read_grid_record

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def read_bank(path: str | os.PathLike, field: str = "reference") -> ReferenceBank:
    """The bank in ``path``, every part checked (``field``: the setting that named the file)."""
    path = Path(path)

    def refuse(part: str, problem: str) -> UserError:
        return UserError(f'reference {path}: "{part}" {problem}', field=field)

    if not path.is_file():
        raise UserError(f"reference {path}: no such file", field=field)
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise UserError(f"reference {path} is not a reference bank ({exc})", field=field) from exc
    if meta.get("format") != str(BANK_FORMAT) or "config" not in meta:
        raise UserError(f"reference {path} is a safetensors file but not a reference bank written by "
                        f"save_reference", field=field)
    try:
        config = ModelConfig.from_dict(_json(meta, "config", refuse), where=f"reference {path}")
    except UserError as exc:
        raise UserError(str(exc), field=field) from exc
    try:
        max_tiles = whole(int(meta.get("max_tiles", "9")), "max_tiles", 1, 1024)
    except (ValueError, UserError) as exc:
        raise refuse("max_tiles", f"must be a whole number of tiles, got {meta.get('max_tiles')!r}") from exc
    grid = read_grid_record({"mode": meta.get("grid", FIXED_GRID), "max_tiles": max_tiles}, f"reference {path}",
                            field)
    sources = _json(meta, "sources", refuse, "[]")
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources) or not sources:
        raise refuse("sources", "must be a non-empty list of image names")

    layers = len(config.features_list)
    expected = {f"{kind}.{i}" for kind in ("global", "tile") for i in range(layers)} | {"global_owner", "tile_owner"}
    missing = sorted(expected - set(tensors))
    if missing:
        raise refuse(missing[0], f"is missing: a bank of {layers} tapped layer(s) has {', '.join(sorted(expected))}")
    extra = sorted(set(tensors) - expected)
    if extra:
        raise refuse(extra[0], f"is not part of a bank of {layers} tapped layer(s) (its settings' features_list)")
    owners = {kind: tensors[f"{kind}_owner"] for kind in ("global", "tile")}
    width = None
    for kind, owner in owners.items():
        if owner.dtype != torch.int64 or owner.dim() != 1 or not len(owner):
            raise refuse(f"{kind}_owner", "must be a non-empty 1-D int64 index of images")
        if int(owner.min()) < 0 or int(owner.max()) >= len(sources):
            raise refuse(f"{kind}_owner", f"must name images 0..{len(sources) - 1} of its sources")
        for i in range(layers):
            table = tensors[f"{kind}.{i}"]
            if table.dtype not in _FLOATS or table.dim() != 2 or table.shape[0] != len(owner):
                raise refuse(f"{kind}.{i}", f"must be a float table of {len(owner)} tokens by their width, got "
                                            f"{table.dtype} {tuple(table.shape)}")
            width = width or table.shape[1]
            if table.shape[1] != width or not math.isfinite(float(table.float().abs().max())):
                raise refuse(f"{kind}.{i}", f"must hold finite tokens of width {width}")
    return ReferenceBank([tensors[f"global.{i}"] for i in range(layers)], [tensors[f"tile.{i}"] for i in range(layers)],
                         owners["global"], owners["tile"], config, grid, sources)


def _json(meta: dict[str, str], key: str, refuse: Any, default: str | None = None) -> Any:
    try:
        return json.loads(meta.get(key, default) if default is not None else meta[key])
    except (ValueError, RecursionError) as exc:
        raise refuse(key, "is not valid JSON") from exc


def check_bank(bank: ReferenceBank, config: ModelConfig, width: int, grid: Grid, where: str) -> None:
    """Refuse a bank built with other vision settings, tokens of another width, or another grid: its
    tokens would not be comparable with this model's (the prompts do not matter)."""
    Signature(bank.config, bank.grid).check(Signature(config, grid.record()), BANK, where)
    if bank.global_tokens[0].shape[1] != width:
        raise UserError(f"reference {where} holds tokens of width {bank.global_tokens[0].shape[1]}, and this model's "
                        f"are {width} wide; rebuild it from the images", field="reference")
