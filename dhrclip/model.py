"""DHR-CLIP: a frozen CLIP, learned prompts, and the multi-view anomaly maps."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from torch import nn

from .maps import anomaly_score_map, combine_views, image_logits, token_probabilities
from .prompts import PromptLearner, TextEncoder
from .tiling import TileGrid
from .vision import VisionEncoder

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class DHRConfig:
    """Everything that shapes the computation; saved with every checkpoint."""

    image_size: int = 336           # S, global view
    patch_image_size: int = 224     # P, tile
    target_image_size: int = 448    # T, canvas
    tiles_per_side: int = 2         # g
    features_list: list[int] = field(default_factory=lambda: [6, 12, 18, 24])
    dpam: int = 20
    depth: int = 9
    n_ctx: int = 12
    t_n_ctx: int = 4
    alpha: float = 0.75

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ViewFeatures:
    """Encoded views of a batch of B images (per tapped layer for the tokens)."""

    global_tokens: list[torch.Tensor]   # (B, 1+N, E) each
    tile_tokens: list[torch.Tensor]     # (B·g², 1+N', E) each
    global_embedding: torch.Tensor      # (B, E)
    tile_embedding: torch.Tensor        # (B·g², E)
    global_grid: tuple[int, int]
    tile_grid: tuple[int, int]

    def tensors(self) -> list[torch.Tensor]:
        return [*self.global_tokens, *self.tile_tokens, self.global_embedding, self.tile_embedding]


class DHRCLIP(nn.Module):
    """Frozen CLIP backbone plus the trainable ``PromptLearner``."""

    def __init__(self, clip: CLIP, config: DHRConfig) -> None:
        super().__init__()
        self.config = config
        self.clip = clip.eval().requires_grad_(False)
        self.tiles = TileGrid(config.target_image_size, config.patch_image_size, config.tiles_per_side)
        self.vision = VisionEncoder(clip.visual, config.features_list, config.dpam)
        self.prompt_learner = PromptLearner(clip.ln_final.weight.shape[0], config.n_ctx, config.depth,
                                            config.t_n_ctx)
        self.text = TextEncoder(clip, self.prompt_learner)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> DHRCLIP:
        """Only the prompts ever train; the backbone stays in eval mode."""
        super().train(mode)
        self.clip.eval()
        return self

    def normalize(self, canvas: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, T, T) canvas -> CLIP-normalised float."""
        return (canvas.float() / 255.0 - self.mean) / self.std

    @torch.no_grad()
    def encode_views(self, canvas: torch.Tensor) -> ViewFeatures:
        """Encode the global view and all tiles of a batch of canvases.

        All tiles of the batch go through one forward and all global views
        through another; when S == P they share a single forward.
        """
        images = self.normalize(canvas)
        s = self.config.image_size
        global_views = F.interpolate(images, size=(s, s), mode="bicubic", antialias=True, align_corners=False)
        tiles = self.tiles.crop(images)
        b = images.shape[0]
        if global_views.shape[-1] == tiles.shape[-1]:
            out = self.vision(torch.cat([global_views, tiles]))
            g_out = t_out = out
            g_slice, t_slice = slice(0, b), slice(b, None)
        else:
            g_out, t_out = self.vision(global_views), self.vision(tiles)
            g_slice = t_slice = slice(None)
        return ViewFeatures(
            global_tokens=[t[g_slice] for t in g_out.tokens],
            tile_tokens=[t[t_slice] for t in t_out.tokens],
            global_embedding=g_out.embedding[g_slice],
            tile_embedding=t_out.embedding[t_slice],
            global_grid=g_out.grid,
            tile_grid=t_out.grid,
        )

    def text_features(self) -> torch.Tensor:
        """(2, E) normalised features of the normal and anomalous prompts."""
        return self.text()

    def layer_maps(self, feats: ViewFeatures, text: torch.Tensor) -> list[torch.Tensor]:
        """Combined (B, 2, T, T) probability map M for every tapped layer (SPEC §5 steps 1-4)."""
        return [
            combine_views(token_probabilities(g, text, feats.global_grid),
                          token_probabilities(t, text, feats.tile_grid), self.tiles, self.config.alpha)
            for g, t in zip(feats.global_tokens, feats.tile_tokens)
        ]

    def anomaly_maps(self, feats: ViewFeatures, text: torch.Tensor) -> torch.Tensor:
        """Raw (B, T, T) anomaly maps, before smoothing and normalisation."""
        return anomaly_score_map(self.layer_maps(feats, text))

    def image_logits(self, feats: ViewFeatures, text: torch.Tensor) -> torch.Tensor:
        """(B, 2) image-level logits (SPEC §6), before the temperature."""
        return image_logits(feats.global_embedding, feats.tile_embedding, text, self.tiles, self.config.alpha)
