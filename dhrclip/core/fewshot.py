"""Few-shot reference banks (docs/method.md §11): the V-V patch tokens of K good images of a part,
and each test token's distance to its nearest neighbour among them as a second anomaly map.

A bank keeps, per tapped layer, the tokens of the global views and of the tiles apart (they see the
part at different scales), each token with the index of the reference image it came from, so an
image can be scored against a bank without its own tokens (leave-one-out calibration). Banks are
saved as safetensors, which load without running code, with the settings they were built with.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from ..config import ModelConfig
from ..errors import UserError
from .maps import combine_views
from .tiling import Placement, TileGrid

log = logging.getLogger(__name__)

CHUNK = 4096  # queries and bank rows per similarity block: at most CHUNK² floats at a time
BANK_FORMAT = 1


@dataclass
class ReferenceBank:
    """Normalised patch tokens of the reference images, per tapped layer and view kind."""

    global_tokens: list[torch.Tensor]   # (Ng, E) each, one per tapped layer
    tile_tokens: list[torch.Tensor]     # (Nt, E) each
    global_owner: torch.Tensor          # (Ng,) reference image of each global token
    tile_owner: torch.Tensor            # (Nt,)
    config: ModelConfig                 # the settings the tokens were computed with
    grid: str = "fixed"                 # and the grid mode
    max_tiles: int = 9
    sources: list[str] = field(default_factory=list)  # the reference images, in owner order

    @property
    def images(self) -> int:
        return len(self.sources)

    def digest(self) -> str:
        """A short identity of the bank's images and settings, for threshold files."""
        text = json.dumps([self.sources, self.config.to_dict(), self.grid, self.max_tiles])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to(self, device: torch.device) -> ReferenceBank:
        moved = [[t.to(device) for t in tokens] for tokens in (self.global_tokens, self.tile_tokens)]
        return ReferenceBank(moved[0], moved[1], self.global_owner.to(device), self.tile_owner.to(device),
                             self.config, self.grid, self.max_tiles, list(self.sources))

    def distance_maps(self, global_tokens: list[torch.Tensor], tile_tokens: list[torch.Tensor],
                      global_grid: tuple[int, int], tile_grid: tuple[int, int], tiles: TileGrid,
                      global_size: tuple[int, int], alpha: float, exclude: torch.Tensor | None = None,
                      inside: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """(B, H, W) few-shot map on the canvas: per layer and view, 1 − the largest cosine
        similarity of each token to the bank, upsampled, stitched and mixed like the zero-shot
        maps, then averaged over layers. ``exclude``: per image, a reference image whose tokens
        it must not be matched with (-1 for none). ``inside``: (B, global patches) and
        (B·tiles, tile patches) masks of the tokens on the image; the others get distance 0."""
        b = global_tokens[0].shape[0]
        per_tile = tiles.count
        layers = []
        for layer, (g, t) in enumerate(zip(global_tokens, tile_tokens)):
            g_patches, t_patches = g[:, 1:], t[:, 1:]
            g_skip = t_skip = None
            if exclude is not None:
                g_skip = exclude.repeat_interleave(g_patches.shape[1])
                t_skip = exclude.repeat_interleave(per_tile * t_patches.shape[1])
            g_dist = 1 - nearest_similarity(g_patches.flatten(0, 1), self.global_tokens[layer], self.global_owner,
                                            g_skip)
            t_dist = 1 - nearest_similarity(t_patches.flatten(0, 1), self.tile_tokens[layer], self.tile_owner,
                                            t_skip)
            g_dist, t_dist = g_dist.view(b, -1), t_dist.view(b * per_tile, -1)
            if inside is not None:
                g_dist, t_dist = g_dist * inside[0].to(g_dist), t_dist * inside[1].to(t_dist)
            layers.append(combine_views(g_dist.view(b, 1, *global_grid), t_dist.view(b * per_tile, 1, *tile_grid),
                                         tiles, global_size, alpha)[:, 0])
        return torch.stack(layers).mean(dim=0)

    def save(self, path: Path) -> None:
        tensors = {"global_owner": self.global_owner.cpu(), "tile_owner": self.tile_owner.cpu()}
        for layer, (g, t) in enumerate(zip(self.global_tokens, self.tile_tokens)):
            tensors[f"global.{layer}"], tensors[f"tile.{layer}"] = g.cpu().contiguous(), t.cpu().contiguous()
        meta = {"format": str(BANK_FORMAT), "config": json.dumps(self.config.to_dict()), "grid": self.grid,
                "max_tiles": str(self.max_tiles), "sources": json.dumps(self.sources)}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: Path) -> ReferenceBank:
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise UserError(f"reference {path} is not a reference bank ({exc})", field="reference") from exc
        if meta.get("format") != str(BANK_FORMAT) or "config" not in meta:
            raise UserError(f"reference {path} is a safetensors file but not a reference bank written by "
                            f"save_reference", field="reference")
        layers = sum(1 for key in tensors if key.startswith("global."))
        return cls([tensors[f"global.{i}"] for i in range(layers)], [tensors[f"tile.{i}"] for i in range(layers)],
                   tensors["global_owner"], tensors["tile_owner"],
                   ModelConfig.from_dict(json.loads(meta["config"]), where=str(path)), meta.get("grid", "fixed"),
                   int(meta.get("max_tiles", 9)), json.loads(meta.get("sources", "[]")))

    def check(self, config: ModelConfig, grid: str, max_tiles: int, where: str) -> None:
        """Refuse a bank built with other vision settings or another grid: its tokens would not be
        comparable with this model's (the prompts do not matter)."""
        name = None if self.config.same_weights(config) else "pretrained"
        unused = ("pretrained", "weights_fingerprint", "depth", "n_ctx", "t_n_ctx", "sigma", "alpha")
        if grid == "auto":  # the canvas and its fixed tiling play no part
            unused += ("target_image_size", "tiles_per_side")
        name = name or config.first_difference(self.config, ignore=unused)
        if name is not None:
            raise UserError(f"reference {where} was built with {name}={getattr(self.config, name)}, and this model "
                            f"uses {getattr(config, name)}; rebuild it from the images", field=name)
        if (grid, max_tiles if grid == "auto" else None) != (self.grid, self.max_tiles if self.grid == "auto"
                                                             else None):
            raise UserError(f"reference {where} was built with grid {self.grid} (max_tiles {self.max_tiles}), and "
                            f"this run uses grid {grid} (max_tiles {max_tiles}); rebuild it or use that grid",
                            field="grid")


def _exporting() -> bool:
    """Whether torch.export is tracing this call (a question older torch releases cannot ask)."""
    check = getattr(torch.compiler, "is_exporting", None)
    return bool(check and check())


def nearest_similarity(queries: torch.Tensor, bank: torch.Tensor, owner: torch.Tensor,
                       exclude: torch.Tensor | None = None) -> torch.Tensor:
    """(M,) largest cosine similarity of each of the (M, E) ``queries`` to the normalised (N, E)
    ``bank``, in blocks of CHUNK × CHUNK so memory stays bounded; a query never matches the
    bank rows whose ``owner`` equals its ``exclude`` entry."""
    queries = F.normalize(queries.float(), dim=-1)
    if _exporting():  # a graph takes any batch: one block of queries, the bank in blocks
        best = torch.full_like(queries[:, 0], -torch.inf)
        for start in range(0, bank.shape[0], CHUNK):
            best = torch.maximum(best, (queries @ bank[start:start + CHUNK].float().t()).max(dim=1).values)
        return best
    best = torch.full((queries.shape[0],), -torch.inf, device=queries.device)
    for q in range(0, queries.shape[0], CHUNK):
        rows = queries[q:q + CHUNK]
        for start in range(0, bank.shape[0], CHUNK):
            sims = rows @ bank[start:start + CHUNK].float().t()
            if exclude is not None:
                sims.masked_fill_(exclude[q:q + CHUNK, None] == owner[None, start:start + CHUNK], -torch.inf)
            best[q:q + CHUNK] = torch.maximum(best[q:q + CHUNK], sims.max(dim=1).values)
    return best


def patch_inside(placement: Placement, tiles: TileGrid, view: tuple[int, int] | None, grid: tuple[int, int],
                 origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Which patch tokens of a view have their centre inside the image's box on the canvas: for
    the global view (``view`` its size, covering the canvas) or a tile at ``origin``."""
    rows, cols = grid
    if view is None:  # a tile: patches of tile/grid canvas pixels from its origin
        step_y, step_x = tiles.tile / rows, tiles.tile / cols
    else:
        step_y, step_x = tiles.height / rows, tiles.width / cols
    y = origin[0] + (torch.arange(rows) + 0.5) * step_y
    x = origin[1] + (torch.arange(cols) + 0.5) * step_x
    inside_y = (y >= placement.top) & (y < placement.top + placement.height)
    inside_x = (x >= placement.left) & (x < placement.left + placement.width)
    return (inside_y[:, None] & inside_x[None, :]).flatten()
