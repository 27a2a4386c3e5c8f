"""CLIP ViT forward with the V-V dual path (DPAM) and true per-layer taps (docs/method.md §3)."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .attention import block_forward, dual_attention
from .budget import cpu_views
from .runtime import exporting

log = logging.getLogger(__name__)


@dataclass
class VisionOutput:
    """What one forward over a batch of same-size views returns.

    tokens: one (B, 1 + N, E) tensor per tapped layer, class token first,
        already through ln_post and proj.
    embedding: (B, E) global embedding of each view.
    grid: (rows, cols) of the patch-token grid.
    """

    tokens: list[torch.Tensor]
    embedding: torch.Tensor
    grid: tuple[int, int]


class VisionEncoder(nn.Module):
    """Frozen open_clip ``VisionTransformer`` read the DHR-CLIP way.

    The last ``dpam - 1`` blocks carry two streams with the block's weights:
    the original stream (attention + MLP) and the V-V stream (V-V attention of
    the *original* stream's LN1, no MLP). Tapped layers are read from the V-V
    stream, each as its own tensor (the reference aliased them all to the last
    layer, docs/method.md §9).
    """

    def __init__(self, visual: Any, features_list: Sequence[int], dpam: int) -> None:
        super().__init__()
        for name in ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj"):
            if getattr(visual, name, None) is None:
                raise UserError(f"the backbone's vision tower is not a CLIP ViT (it has no '{name}')")
        self.visual: Any = visual  # open_clip's VisionTransformer
        self.layers = len(visual.transformer.resblocks)
        bad = [layer for layer in features_list if not 1 <= layer <= self.layers]
        if bad:
            raise UserError(f"features_list {bad} is outside the model's layers 1..{self.layers}",
                            field="features_list")
        if not 1 <= dpam <= self.layers:
            raise UserError(f"dpam {dpam} must be between 1 and the model's depth {self.layers}", field="dpam")
        self.features_list = list(features_list)
        self.first_dual = self.layers - dpam + 2  # 1-based index of the first dual-path block
        self.patch_size = visual.conv1.kernel_size[0]
        self.width = int(visual.conv1.out_channels)
        side = round((visual.positional_embedding.shape[0] - 1) ** 0.5)
        self.native_grid = (side, side)
        self._pos_cache: dict[tuple[int, int, torch.device, torch.dtype], torch.Tensor] = {}
        self._warned_sizes: set[tuple[int, int]] = set()

    def positional_embedding(self, grid: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        """(1 + rows·cols, D) table for ``grid``, always interpolated from the checkpoint's own
        table and cached per size, so the stored parameter never changes (docs/method.md §9). While
        an export traces a symbolic size, it is interpolated in the graph."""
        key = (*grid, like.device, like.dtype)
        if exporting() or key not in self._pos_cache:
            table = self.visual.positional_embedding.detach().float()
            cls, patches = table[:1], table[1:]
            if exporting() or grid != self.native_grid:  # the same size interpolates to itself exactly
                patches = patches.reshape(1, *self.native_grid, -1).permute(0, 3, 1, 2)
                patches = F.interpolate(patches, size=grid, mode="bilinear", align_corners=False)
                patches = patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
            table = torch.cat([cls, patches]).to(like.device, like.dtype)
            if exporting():
                return table
            self._pos_cache[key] = table
        return self._pos_cache[key]

    def forward(self, images: torch.Tensor) -> VisionOutput:
        """Encode (B, 3, H, W) views. Sizes that are not multiples of the patch size are
        allowed, as in the reference: the patch grid covers the top-left whole patches. On the
        CPU the views go through in chunks of ``budget.cpu_views``."""
        if images.device.type == "cpu" and not exporting():
            chunk = cpu_views((images.shape[-2] // self.patch_size) * (images.shape[-1] // self.patch_size),
                              self.width)
            if images.shape[0] > chunk:
                parts = [self._forward(images[start:start + chunk]) for start in range(0, images.shape[0], chunk)]
                return VisionOutput(tokens=[torch.cat(layer) for layer in zip(*(p.tokens for p in parts))],
                                    embedding=torch.cat([p.embedding for p in parts]), grid=parts[0].grid)
        return self._forward(images)

    def _forward(self, images: torch.Tensor) -> VisionOutput:
        h, w = images.shape[-2:]
        if (h % self.patch_size or w % self.patch_size) and (h, w) not in self._warned_sizes:
            self._warned_sizes.add((h, w))
            log.warning("view size %dx%d is not a multiple of the patch size %d: its last %d rows and %d columns "
                        "are not seen", h, w, self.patch_size, h % self.patch_size, w % self.patch_size)
        v = self.visual
        x = v.conv1(images.to(v.conv1.weight.dtype))
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = v.ln_pre(x + self.positional_embedding(grid, x))

        taps: dict[int, torch.Tensor] = {}
        x_vv: torch.Tensor | None = None
        for index, block in enumerate(v.transformer.resblocks, start=1):
            if index < self.first_dual:
                x = block_forward(block, x)
            else:
                if x_vv is None:
                    x_vv = x  # both streams start from the same input
                attended, vv = dual_attention(block.attn, block.ln_1(x))
                x_vv = x_vv + block.ls_1(vv)
                x = x + block.ls_1(attended)
                x = x + block.ls_2(block.mlp(block.ln_2(x)))
            if index in self.features_list:
                taps[index] = x_vv if x_vv is not None else x

        tokens = [v.ln_post(taps[layer]) @ v.proj for layer in self.features_list]
        # The global embedding skips ln_post, as the reference and AnomalyCLIP compute it
        # (docs/method.md §3); this differs from plain CLIP's image embedding on purpose.
        embedding = x[:, 0] @ v.proj
        return VisionOutput(tokens=tokens, embedding=embedding, grid=grid)
