"""The DHR-CLIP network: a frozen CLIP, learned prompts, and the multi-view anomaly maps."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from open_clip.model import CLIP
from torch import nn

from ..config import ModelConfig
from ..errors import UserError
from .fewshot import ReferenceBank
from .grid import FixedGrid, Placement, TileGrid
from .maps import (
    BoxBlur,
    anomaly_score_map,
    combine_views,
    gaussian_blur,
    image_logits,
    image_scores,
    token_probabilities,
)
from .prompts import PromptLearner, TextEncoder
from .resize import resize_antialiased
from .runtime import autocast
from .tiling import Layout, crop
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
    boxes: torch.Tensor | None = None   # (B, 4) each image's box on its canvas; None: they fill it

    @property
    def layout(self) -> Layout:
        return Layout(self.tiles, self.global_size, self.boxes)


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

    def layout(self, placements: Sequence[Placement] | None, device: torch.device) -> Layout:
        """The ``Layout`` of a batch placed as ``placements`` (None: every image fills the fixed
        T×T canvas, whatever the batch size)."""
        return Layout.of(placements or [self.fixed_grid.place()], self.config.image_size, self.vision.patch_size,
                         device)

    @torch.no_grad()
    def encode_views(self, canvas: torch.Tensor, placements: Sequence[Placement] | None = None) -> ViewFeatures:
        """Encode the global view and all tiles of a batch of canvases of one tile grid, placed
        as ``placements`` (as in ``forward``)."""
        return self.encode(canvas, self.layout(placements, canvas.device))

    @torch.no_grad()
    def encode(self, canvas: torch.Tensor, layout: Layout) -> ViewFeatures:
        """``encode_views`` of canvases laid out as ``layout``. The canvas outside each image's
        box is padding: zero after normalisation, the CLIP mean colour. All tiles of the batch
        go through one forward and all global views through another; when they have one size
        they share a single forward. The vision tower runs under autocast at ``self.precision``."""
        tiles, size = layout.tiles, layout.global_size
        if tuple(canvas.shape[-2:]) != tiles.size:
            raise ValueError(f"canvas {tuple(canvas.shape[-2:])} does not match its grid {tiles.size}")
        images = self.normalize(canvas)
        if layout.boxes is not None:
            images = images * layout.pixels_inside()
        global_views = resize_antialiased(images, size)
        crops = crop(images, tiles)
        b = images.shape[0]
        with autocast(canvas.device, self.precision):
            # one forward when the views have one size (sizes known while tracing are compared only then)
            if isinstance(size[0], int) and isinstance(size[1], int) and size == (tiles.tile, tiles.tile):
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
            boxes=layout.boxes,
        )

    def text_features(self, learned: tuple[torch.Tensor, list[torch.Tensor]] | None = None) -> torch.Tensor:
        """(2, E) normalised fp32 features of the normal and anomalous prompts; ``learned`` is the
        prompt learner's output when training calls it through a wrapper."""
        with torch.autocast(self.clip.text_projection.device.type, enabled=False):
            return self.text(learned)

    def layer_maps(self, feats: ViewFeatures, text: torch.Tensor, fill: bool = False) -> list[torch.Tensor]:
        """Combined (B, 2, H, W) probability map M on the canvas for every tapped layer
        (docs/method.md §5 steps 1-4). With ``fill``, padding tokens first take the values of
        the nearest tokens on the image (``Layout.fill_padding``), as inference does; training
        scores the whole canvas against masks that mark the padding normal."""
        maps = []
        for g, t in zip(feats.global_tokens, feats.tile_tokens):
            g_probs = token_probabilities(g, text, feats.global_grid)
            t_probs = token_probabilities(t, text, feats.tile_grid)
            if fill:
                g_probs, t_probs = feats.layout.fill_padding(g_probs, t_probs, feats.global_grid, feats.tile_grid)
            maps.append(combine_views(g_probs, t_probs, feats.tiles, feats.global_size, self.config.alpha))
        return maps

    def anomaly_maps(self, feats: ViewFeatures, text: torch.Tensor) -> torch.Tensor:
        """Raw (B, H, W) anomaly maps on the canvas, before smoothing and normalisation; inside
        each image's box they do not depend on its padding."""
        return anomaly_score_map(self.layer_maps(feats, text, fill=True))

    def image_logits(self, feats: ViewFeatures, text: torch.Tensor) -> torch.Tensor:
        """(B, 2) image-level logits (docs/method.md §6), before the temperature."""
        return image_logits(feats.global_embedding, feats.tile_embedding, text, feats.tiles, self.config.alpha)

    def few_shot_maps(self, feats: ViewFeatures, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H, W) distance of the batch's tokens to the reference bank (docs/method.md §11), in
        the bank's units (``ReferenceBank.token_distances``), per layer combined across views as
        the zero-shot maps are, then summed over layers as they are; padding tokens take the
        distances of the nearest tokens on the image."""
        if self.reference is None:
            raise ValueError("few_shot_maps needs a reference bank")
        layers = []
        for g, t in self.reference.token_distances(feats.global_tokens, feats.tile_tokens, feats.global_grid,
                                                   feats.tile_grid, exclude):
            g, t = feats.layout.fill_padding(g, t, feats.global_grid, feats.tile_grid)
            layers.append(combine_views(g, t, feats.tiles, feats.global_size, self.config.alpha)[:, 0])
        return torch.stack(layers).sum(dim=0)

    @torch.no_grad()
    def forward(self, canvas: torch.Tensor, placements: Sequence[Placement] | None = None,
                text: torch.Tensor | None = None, exclude: torch.Tensor | None = None
                ) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]:
        """uint8 (B, 3, H, W) canvases of one tile grid -> one smoothed float32 anomaly map per image
        and (B,) image scores.

        ``placements``: where each image sits on its canvas (None: every image fills the fixed
        T×T canvas, whatever the batch size). Maps come as a (B, H, W) tensor when every image
        fills its canvas, else as a list of each image's box. ``text`` is ``text_features()``;
        pass it when calling batch after batch, since the prompts do not change between batches
        at inference. With a ``reference`` bank set, the few-shot map is added (``exclude``: per
        image, a reference image not to match it with, -1 for none).
        """
        layout = self.layout(placements, canvas.device)
        maps, scores = self.detect(canvas, layout, text, exclude)
        if layout.boxes is None or placements is None:  # every image fills its canvas
            return maps, scores
        return [maps[i, p.box[0], p.box[1]] for i, p in enumerate(placements)], scores

    def detect(self, canvas: torch.Tensor, layout: Layout, text: torch.Tensor | None = None,
               exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` on canvases laid out as ``layout``: (B, H, W) float32 maps on the canvas,
        each smoothed within its image's box (``maps.BoxBlur``) and zero outside it, and (B,)
        scores. This is what the ONNX export traces, with the canvas size symbolic."""
        text = self.text_features() if text is None else text
        feats = self.encode(canvas, layout)
        sigma = self.config.sigma
        maps = self.anomaly_maps(feats, text).float()
        smooth: Callable[[torch.Tensor], torch.Tensor] = (partial(gaussian_blur, sigma=sigma) if layout.boxes is None
                  else BoxBlur(layout.boxes, maps, sigma))  # its operators serve the few-shot map too
        maps = smooth(maps)
        scores = image_scores(self.image_logits(feats, text))
        if self.reference is None:
            return maps, scores
        # the few-shot map adds to the zero-shot one, and its maximum per layer (on the image:
        # zero outside the box, distances are not negative) to the score (docs/method.md §11)
        few = smooth(self.few_shot_maps(feats, exclude).float())
        layers = len(self.config.features_list)
        return maps + few, (scores + few.flatten(1).max(dim=1).values / layers) / 2
