"""From view features to anomaly maps and image scores (docs/method.md §5, §6)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .grid import TileGrid
from .tiling import stitch

TEMPERATURE = 0.07


def token_probabilities(tokens: torch.Tensor, text: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, 1 + N, E) tokens vs (2, E) text -> (B, 2, rows, cols) softmax of {normal, anomalous}."""
    patches = F.normalize(tokens[:, 1:].float(), dim=-1)
    probs = (patches @ text.float().t() / TEMPERATURE).softmax(dim=-1)
    return probs.transpose(1, 2).reshape(tokens.shape[0], 2, *grid)


def combine_views(global_probs: torch.Tensor, tile_probs: torch.Tensor, tiles: TileGrid,
                  global_size: int | tuple[int, int], alpha: float) -> torch.Tensor:
    """Upsample, stitch and mix one layer's maps (docs/method.md §5 steps 2-4).

    global_probs: (B, 2, r, c) on the global view's token grid, upsampled in two
    bilinear steps as the method does: grid -> the view's own size -> canvas;
    tile_probs: (B·rows·cols, 2, r', c') on the tiles' grid, upsampled to P.
    Returns (B, 2, H, W) on the canvas: α·global + (1-α)·tiles.
    """
    size = (global_size, global_size) if isinstance(global_size, int) else tuple(global_size)
    global_map = F.interpolate(global_probs, size=size, mode="bilinear", align_corners=False)
    global_map = F.interpolate(global_map, size=tiles.size, mode="bilinear", align_corners=False)
    tile_maps = F.interpolate(tile_probs, size=(tiles.tile, tiles.tile), mode="bilinear", align_corners=False)
    return alpha * global_map + (1 - alpha) * stitch(tile_maps, tiles)


def anomaly_score_map(layer_maps: list[torch.Tensor]) -> torch.Tensor:
    """Σ over tapped layers of (p_a + 1 - p_n) / 2, shape (B, H, W)."""
    return torch.stack([(m[:, 1] + 1 - m[:, 0]) / 2 for m in layer_maps]).sum(dim=0)


def _symmetric_indices(size: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices that extend an axis by ``radius`` on each side, mirroring about the edge
    with the edge pixel repeated (scipy.ndimage's 'reflect' mode)."""
    idx = torch.arange(-radius, size + radius, device=device)
    period = 2 * size
    idx = torch.remainder(idx, period)
    return torch.where(idx >= size, period - 1 - idx, idx)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian of (B, H, W) maps, equal to ``scipy.ndimage.gaussian_filter``
    with its defaults (truncate 4, 'reflect' borders), computed on the maps' device."""
    if sigma <= 0:
        return maps
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, device=maps.device, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(maps.dtype)
    out = maps.unsqueeze(1)
    h, w = maps.shape[-2:]
    out = out[..., _symmetric_indices(h, radius, maps.device), :]
    out = F.conv2d(out, kernel.view(1, 1, -1, 1))
    out = out[..., _symmetric_indices(w, radius, maps.device)]
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    return out.squeeze(1)


def minmax_normalize(maps: torch.Tensor) -> torch.Tensor:
    """Scale each (H, W) map of a (B, H, W) batch to [0, 1]; a constant map becomes zeros."""
    flat = maps.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1)
    span = (flat.max(dim=1).values.view(-1, 1, 1) - low)
    return torch.where(span > 0, (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))


def view_logits(embedding: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(N, 2) cosine logits of view embeddings against the two text features, before the temperature."""
    return F.normalize(embedding.float(), dim=-1) @ text.float().t()


def image_logits(global_embedding: torch.Tensor, tile_embedding: torch.Tensor, text: torch.Tensor,
                 tiles: TileGrid, alpha: float) -> torch.Tensor:
    """(B, 2) image logits: α·global + (1-α)·mean over tiles, every view's embedding
    normalised (the authors left tile embeddings raw, docs/method.md §6, §9)."""
    tile_logits = view_logits(tile_embedding, text).unflatten(0, (-1, tiles.count))
    return alpha * view_logits(global_embedding, text) + (1 - alpha) * tile_logits.mean(dim=1)


def image_scores(logits: torch.Tensor) -> torch.Tensor:
    """P(anomalous) from (B, 2) image logits."""
    return (logits / TEMPERATURE).softmax(dim=-1)[:, 1]

