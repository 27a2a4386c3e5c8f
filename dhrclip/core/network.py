"""The DHR-CLIP network: a frozen CLIP, learned prompts, and the multi-view anomaly maps."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from torch import nn

from ..config import ModelConfig
from ..errors import UserError
from .fewshot import ReferenceBank
from .grid import FixedGrid, Placement, TileGrid, global_view_size
from .maps import anomaly_score_map, combine_views, gaussian_blur, image_logits, image_scores, token_probabilities
from .prompts import PromptLearner, TextEncoder
from .runtime import autocast
from .tiling import crop, pixels_inside, shared_tiles, tokens_inside
from .vision import VisionEncoder

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ViewFeatures:
    """Encoded views of a batch of B images (per tapped layer for the tokens)."""

    global_tokens: list[torch.Tensor]   # (B, 1+N, E) each
    tile_tokens: list[torch.Tensor]     # (B·g², 1+N', E) each
    global_embedding: torch.Tensor      # (B, E)
    tile_embedding: torch.Tensor        # (B·g², E)
    global_grid: tuple[int, int]
    tile_grid: tuple[int, int]
    tiles: TileGrid                     # the canvas and its tiles
    global_size: tuple[int, int]        # (height, width) of the global view


def with_few_shot(maps: torch.Tensor, scores: torch.Tensor, few: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Smoothed (B, h, w) zero-shot maps and (B,) scores, with a reference bank's smoothed few-shot
    maps added: the maps sum, and the score is the mean of the zero-shot score and the few-shot
    map's maximum (docs/method.md §11)."""
    if few is None:
        return maps, scores
    return maps + few, (scores + few.flatten(1).max(dim=1).values) / 2


class DHRCLIPNetwork(nn.Module):
    """Frozen CLIP backbone plus the trainable ``PromptLearner``.

    ``precision`` is the autocast dtype of the frozen vision tower only; the text
    tower, the prompts, the maps and the loss always run in fp32 (docs/method.md §4).
    """

    mean: torch.Tensor  # CLIP's normalisation, buffers
    std: torch.Tensor

    def __init__(self, clip: CLIP, config: ModelConfig, precision: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.config = config
        self.precision = precision
        self.clip = clip.eval().requires_grad_(False)
        # the grid of a canvas given without placements; made here, so a geometry with gaps is refused at once
        self.fixed_grid = FixedGrid(config.target_image_size, config.patch_image_size, config.tiles_per_side)
        self.vision = VisionEncoder(clip.visual, config.features_list, config.dpam)
        for name in ("image_size", "patch_image_size"):
            if getattr(config, name) < self.vision.patch_size:
                raise UserError(f"{name} {getattr(config, name)} is smaller than the backbone's patch of "
                                f"{self.vision.patch_size} pixels", field=name)
        self.prompt_learner = PromptLearner(clip.ln_final.weight.shape[0], config.n_ctx, config.depth,
                                            config.t_n_ctx)
        self.text = TextEncoder(clip, self.prompt_learner)
        self.reference: ReferenceBank | None = None  # few-shot: added to the zero-shot maps when set
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def token_width(self) -> int:
        """The width of the patch tokens the maps compare (the backbone's embedding)."""
        return int(self.clip.visual.proj.shape[1])

    @property
    def device(self) -> torch.device:
        return self.prompt_learner.ctx_pos.device

    def train(self, mode: bool = True) -> DHRCLIPNetwork:
        """Only the prompts ever train; the backbone stays in eval mode."""
        super().train(mode)
        self.clip.eval()
        return self

    def normalize(self, canvas: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, T, T) canvas -> CLIP-normalised float."""
        return (canvas.float() / 255.0 - self.mean) / self.std

    @torch.no_grad()
    def encode_views(self, canvas: torch.Tensor, placements: Sequence[Placement] | None = None) -> ViewFeatures:
        """Encode the global view and all tiles of a batch of canvases of one tile grid.

        ``placements`` as in ``forward``. The canvas outside each image's box is padding: zero
        after normalisation, the CLIP mean colour. All tiles of the batch go through one forward
        and all global views through another; when they have one size they share a single
        forward. The vision tower runs
        under autocast at ``self.precision``.
        """
        placements = placements or [self.fixed_grid.place()]
        tiles = shared_tiles(placements)
        if tuple(canvas.shape[-2:]) != tiles.size:
            raise ValueError(f"canvas {tuple(canvas.shape[-2:])} does not match its grid {tiles.size}")
        images = self.normalize(canvas)
        if not all(p.fills_canvas for p in placements):
            images = images * pixels_inside(placements, images.device)
        size = global_view_size(*tiles.size, self.config.image_size, self.vision.patch_size)
        global_views = F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)
        crops = crop(images, tiles)
        b = images.shape[0]
        with autocast(canvas.device, self.precision):
            if global_views.shape[-2:] == crops.shape[-2:]:
                out = self.vision(torch.cat([global_views, crops]))
                g_out = t_out = out
                g_slice, t_slice = slice(0, b), slice(b, None)
            else:
                g_out, t_out = self.vision(global_views), self.vision(crops)
                g_slice = t_slice = slice(None)
        return ViewFeatures(
            global_tokens=[t[g_slice] for t in g_out.tokens],
            tile_tokens=[t[t_slice] for t in t_out.tokens],
            global_embedding=g_out.embedding[g_slice],
            tile_embedding=t_out.embedding[t_slice],
            global_grid=g_out.grid,
            tile_grid=t_out.grid,
            tiles=tiles,
            global_size=size,
        )

    def text_features(self, learned: tuple[torch.Tensor, list[torch.Tensor]] | None = None) -> torch.Tensor:
        """(2, E) normalised fp32 features of the normal and anomalous prompts; ``learned`` is the
        prompt learner's output when training calls it through a wrapper."""
        with torch.autocast(self.clip.text_projection.device.type, enabled=False):
            return self.text(learned)

    def layer_maps(self, feats: ViewFeatures, text: torch.Tensor) -> list[torch.Tensor]:
        """Combined (B, 2, H, W) probability map M on the canvas for every tapped layer
        (docs/method.md §5 steps 1-4)."""
        return [
            combine_views(token_probabilities(g, text, feats.global_grid),
                          token_probabilities(t, text, feats.tile_grid), feats.tiles, feats.global_size,
                          self.config.alpha)
            for g, t in zip(feats.global_tokens, feats.tile_tokens)
        ]

    def anomaly_maps(self, feats: ViewFeatures, text: torch.Tensor) -> torch.Tensor:
        """Raw (B, H, W) anomaly maps on the canvas, before smoothing and normalisation."""
        return anomaly_score_map(self.layer_maps(feats, text))

    def image_logits(self, feats: ViewFeatures, text: torch.Tensor) -> torch.Tensor:
        """(B, 2) image-level logits (docs/method.md §6), before the temperature."""
        return image_logits(feats.global_embedding, feats.tile_embedding, text, feats.tiles, self.config.alpha)

    def few_shot_maps(self, feats: ViewFeatures, placements: Sequence[Placement] | None = None,
                      exclude: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H, W) distance of the batch's tokens to the reference bank (docs/method.md §11); tokens
        of the padding count as distance 0, like the padding in the bank. ``placements`` as in
        ``forward``."""
        inside = None
        if placements is not None and not all(p.fills_canvas for p in placements):
            inside = tokens_inside(placements, feats.global_size, feats.global_grid, feats.tile_grid)
        if self.reference is None:
            raise ValueError("few_shot_maps needs a reference bank")
        return self.reference.distance_maps(feats.global_tokens, feats.tile_tokens, feats.global_grid,
                                            feats.tile_grid, feats.tiles, feats.global_size, self.config.alpha,
                                            exclude, inside)

    @torch.no_grad()
    def forward(self, canvas: torch.Tensor, placements: Sequence[Placement] | None = None,
                text: torch.Tensor | None = None, exclude: torch.Tensor | None = None
                ) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]:
        """uint8 (B, 3, H, W) canvases of one tile grid -> one smoothed float32 anomaly map per image
        and (B,) image scores.

        ``placements``: where each image sits on its canvas (None: every image fills the fixed
        T×T canvas, whatever the batch size, as the ONNX export traces it). Each map is cropped to
        its image's box before smoothing, so padding never reaches it; maps come as a (B, H, W)
        tensor when every image fills its canvas, else as a list. ``text`` is
        ``text_features()``; pass it when calling batch after batch, since the prompts do not
        change between batches at inference. With a ``reference`` bank set, the few-shot map is
        added (``exclude``: per image, a reference image not to match it with, -1 for none).
        """
        placements = placements or [self.fixed_grid.place()]  # one placement shared by the whole batch
        text = self.text_features() if text is None else text
        feats = self.encode_views(canvas, placements)
        zero = self.anomaly_maps(feats, text).float()
        few = self.few_shot_maps(feats, placements, exclude).float() if self.reference is not None else None
        scores = image_scores(self.image_logits(feats, text))
        sigma = self.config.sigma
        if all(p.fills_canvas for p in placements):  # one batch, smoothed together
            return with_few_shot(gaussian_blur(zero, sigma), scores,
                                 None if few is None else gaussian_blur(few, sigma))
        maps, image = [], []
        for i, placed in enumerate(placements):  # each image's box, smoothed on its own
            box = (slice(i, i + 1), *placed.box)
            one, score = with_few_shot(gaussian_blur(zero[box], sigma), scores[i:i + 1],
                                       None if few is None else gaussian_blur(few[box], sigma))
            maps.append(one[0])
            image.append(score)
        return maps, torch.cat(image)
