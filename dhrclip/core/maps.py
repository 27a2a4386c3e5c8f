"""From view features to anomaly maps and image scores (docs/method.md §5, §6)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from .grid import TileGrid
from .runtime import exporting
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
    with its defaults (truncate 4, 'reflect' borders), computed on the maps' device. On the CPU
    (outside autograd and export) it is scipy's own, one map per thread: a 65-tap pass over
    672² maps takes 8 ms per map there against 23 ms as two convolutions."""
    if sigma <= 0:
        return maps
    if maps.device.type == "cpu" and maps.dtype == torch.float32 and not maps.requires_grad and not exporting():
        return _host_blur(maps, sigma)
    kernel, radius = _kernel(sigma, maps)
    out = maps.unsqueeze(1)
    h, w = maps.shape[-2:]
    out = out[..., _symmetric_indices(h, radius, maps.device), :]
    out = F.conv2d(out, kernel.view(1, 1, -1, 1))
    out = out[..., _symmetric_indices(w, radius, maps.device)]
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    return out.squeeze(1)


def _host_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """``gaussian_blur`` by scipy on the host, the maps shared out over torch's CPU threads
    (scipy's filters release the GIL)."""
    source = maps.contiguous().numpy()
    out = np.empty_like(source)
    with ThreadPoolExecutor(max(1, min(torch.get_num_threads(), len(source)))) as pool:
        list(pool.map(lambda k: gaussian_filter(source[k], sigma, output=out[k]), range(len(source))))
    return torch.from_numpy(out)


def _kernel(sigma: float, like: torch.Tensor) -> tuple[torch.Tensor, int]:
    """scipy.ndimage's Gaussian weights for ``sigma`` (truncate 4) and their radius."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, device=like.device, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).to(like.dtype), radius


def _box_operator(start: torch.Tensor, length: torch.Tensor, size: int, kernel: torch.Tensor,
                  radius: int) -> torch.Tensor:
    """(B, size, size) matrices of a Gaussian along one axis within each box's [start, start +
    length), mirrored at the box's edges as ``gaussian_blur`` mirrors at a map's; rows outside
    the box are zero."""
    position = torch.arange(size, device=start.device)
    offset = torch.arange(-radius, radius + 1, device=start.device)
    relative = position[None, :, None] - start[:, None, None] + offset[None, None, :]
    period = 2 * length[:, None, None]
    relative = torch.remainder(relative, period)
    source = start[:, None, None] + torch.where(relative >= length[:, None, None], period - 1 - relative, relative)
    inside = (position[None] >= start[:, None]) & (position[None] < (start + length)[:, None])
    weights = kernel[None, None, :] * inside[:, :, None].to(kernel.dtype)
    matrix = torch.zeros(start.shape[0], size, size, dtype=kernel.dtype, device=start.device)
    return matrix.scatter_add(2, source, weights)


class BoxBlur:
    """``box_blur`` for one batch of boxes: its two operators built once, for every map of the batch
    (the zero-shot and the few-shot map share them)."""

    def __init__(self, boxes: torch.Tensor, like: torch.Tensor, sigma: float) -> None:
        """``like``: a (B, H, W) map of the batch, for the size, dtype and device."""
        height, width = like.shape[-2:]
        if sigma <= 0:
            kernel, radius = torch.ones(1, dtype=like.dtype, device=like.device), 0
        else:
            kernel, radius = _kernel(sigma, like)
        top, left, h, w = boxes.unbind(dim=1)
        self.rows = _box_operator(top, h, height, kernel, radius)
        self.cols = _box_operator(left, w, width, kernel, radius).transpose(1, 2)

    def __call__(self, maps: torch.Tensor) -> torch.Tensor:
        return self.rows @ maps @ self.cols


def box_blur(maps: torch.Tensor, boxes: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, H, W) maps smoothed within each image's box (B, 4: top, left, height, width), equal to
    ``gaussian_blur`` of the box alone (mirrored at the box's edges, so no padding enters), and
    zero outside it. Written as one matrix per axis and image, so a batch of boxes of any sizes
    runs as two batched products, on the device and in an exported graph alike."""
    return BoxBlur(boxes, maps, sigma)(maps)


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

