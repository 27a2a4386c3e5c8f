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
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save

from ..config import DEFAULT_MAX_TILES, FIXED_GRID, ModelConfig
from ..files import atomic_write
from .runtime import exporting

log = logging.getLogger(__name__)

CHUNK = 4096  # queries and bank rows per similarity block: at most CHUNK² floats at a time
BANK_FORMAT = 1
SCALE_SAMPLE = 1024  # bank tokens whose leave-one-out distances set a layer's unit (evenly spaced)


@dataclass
class ReferenceBank:
    """Normalised patch tokens of the reference images, per tapped layer and view kind."""

    global_tokens: list[torch.Tensor]   # (Ng, E) each, one per tapped layer
    tile_tokens: list[torch.Tensor]     # (Nt, E) each
    global_owner: torch.Tensor          # (Ng,) reference image of each global token
    tile_owner: torch.Tensor            # (Nt,)
    config: ModelConfig                 # the settings the tokens were computed with
    grid: dict = field(default_factory=lambda: {"mode": FIXED_GRID})  # and the grid's record
    sources: list[str] = field(default_factory=list)  # the reference images, in owner order

    @property
    def images(self) -> int:
        return len(self.sources)

    def digest(self) -> str:
        """A short identity of the bank's images and settings, for threshold files."""
        text = json.dumps([self.sources, self.config.to_dict(), self.grid["mode"],
                           self.grid.get("max_tiles", DEFAULT_MAX_TILES)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to(self, device: torch.device) -> ReferenceBank:
        moved = [[t.to(device) for t in tokens] for tokens in (self.global_tokens, self.tile_tokens)]
        return ReferenceBank(moved[0], moved[1], self.global_owner.to(device), self.tile_owner.to(device),
                             self.config, dict(self.grid), list(self.sources))

    @cached_property
    def units(self) -> list[tuple[float, float]]:
        """Per tapped layer, (global, tile): how far the bank's own tokens lie from the other
        reference images' (the mean leave-one-out nearest-neighbour distance of up to
        ``SCALE_SAMPLE`` of its tokens; with one image, from its other tokens). The few-shot
        map counts distance in these units, so that its scale does not depend on the layer,
        the backbone or the number of taps (docs/method.md §11)."""
        units = []
        for g, t in zip(self.global_tokens, self.tile_tokens):
            units.append((self._unit(g, self.global_owner), self._unit(t, self.tile_owner)))
        return units

    def _unit(self, tokens: torch.Tensor, owner: torch.Tensor) -> float:
        if self.images < 2:  # one image: leave out the token itself
            owner = torch.arange(len(tokens), device=tokens.device)
        pick = torch.linspace(0, len(tokens) - 1, min(SCALE_SAMPLE, len(tokens)), device=tokens.device).long()
        distance = 1 - nearest_similarity(tokens[pick], tokens, owner, owner[pick])
        return max(float(distance.mean()), 1e-6)

    def token_distances(self, global_tokens: list[torch.Tensor], tile_tokens: list[torch.Tensor],
                        global_grid: tuple[int, int], tile_grid: tuple[int, int],
                        exclude: torch.Tensor | None = None, scaled: bool = True
                        ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per tapped layer, 1 − the largest cosine similarity of each view token to the bank's
        tokens of its view kind, as token grids: (B, 1, r, c) of the global views and (B·tiles,
        1, r', c') of the tiles; with ``scaled``, in units of twice the layer's ``units``, so
        that a token as far from the bank as good parts are from each other scores 0.5.
        ``exclude``: per image, a reference image whose tokens it must not be matched with (-1
        for none)."""
        b = global_tokens[0].shape[0]
        per_tile = tile_tokens[0].shape[0] // b
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
            if scaled:
                g_unit, t_unit = self.units[layer]
                g_dist, t_dist = g_dist / (2 * g_unit), t_dist / (2 * t_unit)
            layers.append((g_dist.reshape(b, 1, *global_grid), t_dist.reshape(-1, 1, *tile_grid)))
        return layers

    def save(self, path: str | os.PathLike) -> None:
        """Write the bank as safetensors, atomically: a kill leaves the old file or the new one.
        ``detector.bank.read_bank`` reads it back."""
        tensors = {"global_owner": self.global_owner.cpu(), "tile_owner": self.tile_owner.cpu()}
        for layer, (g, t) in enumerate(zip(self.global_tokens, self.tile_tokens)):
            tensors[f"global.{layer}"], tensors[f"tile.{layer}"] = g.cpu().contiguous(), t.cpu().contiguous()
        meta = {"format": str(BANK_FORMAT), "config": json.dumps(self.config.to_dict()), "grid": self.grid["mode"],
                "max_tiles": str(self.grid.get("max_tiles", DEFAULT_MAX_TILES)), "sources": json.dumps(self.sources)}
        data = save(tensors, metadata=meta)
        atomic_write(Path(path), lambda f: f.write(data))


def nearest_similarity(queries: torch.Tensor, bank: torch.Tensor, owner: torch.Tensor,
                       exclude: torch.Tensor | None = None) -> torch.Tensor:
    """(M,) largest cosine similarity of each of the (M, E) ``queries`` to the normalised (N, E)
    ``bank``, in blocks of CHUNK × CHUNK so memory stays bounded; a query never matches the
    bank rows whose ``owner`` equals its ``exclude`` entry."""
    queries = F.normalize(queries.float(), dim=-1)
    if exporting():  # a graph takes any batch: one block of queries, the bank in blocks
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
