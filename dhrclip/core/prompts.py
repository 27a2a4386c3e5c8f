"""Object-agnostic deep text prompts (docs/method.md §4)."""
from __future__ import annotations

from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .attention import block_forward

NORMAL_TEMPLATE = "object."
ANOMALOUS_TEMPLATE = "damaged object."


class PromptLearner(nn.Module):
    """The only trained parameters of DHR-CLIP.

    Parameter names and shapes follow the authors' code (and AnomalyCLIP), so
    their checkpoints load into this module (docs/method.md §4):
    ``ctx_pos``/``ctx_neg`` (1, 1, n_ctx, width) are the learned words of the
    normal / anomalous prompt; ``compound_prompts_text.{i}`` (t_n_ctx, width)
    replace token positions 1..t_n_ctx before text block i + 1.
    """

    def __init__(self, width: int, n_ctx: int = 12, depth: int = 9, t_n_ctx: int = 4) -> None:
        super().__init__()
        if n_ctx < 1 or t_n_ctx < 0 or depth < 1:
            raise UserError(f"n_ctx {n_ctx}, t_n_ctx {t_n_ctx}, depth {depth}: all must be positive", field="n_ctx")
        if t_n_ctx > n_ctx:
            raise UserError(f"t_n_ctx {t_n_ctx} must not exceed n_ctx {n_ctx}", field="t_n_ctx")
        self.n_ctx, self.depth, self.t_n_ctx, self.width = n_ctx, depth, t_n_ctx, width
        self.ctx_pos = nn.Parameter(torch.empty(1, 1, n_ctx, width).normal_(std=0.02))
        self.ctx_neg = nn.Parameter(torch.empty(1, 1, n_ctx, width).normal_(std=0.02))
        self.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(torch.empty(t_n_ctx, width).normal_(std=0.02)) for _ in range(depth - 1)])

    def context(self) -> torch.Tensor:
        """(2, n_ctx, width): normal then anomalous."""
        return torch.cat([self.ctx_pos[0], self.ctx_neg[0]], dim=0)

    def forward(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The learned context and deep prompts, as ``TextEncoder`` takes them. Training calls
        this through DistributedDataParallel when several processes share the work."""
        return self.context(), list(self.compound_prompts_text)


class TextEncoder(nn.Module):
    """Frozen CLIP text transformer driven by a ``PromptLearner``."""

    tokens: torch.Tensor  # the two prompts' token ids, a buffer

    def __init__(self, clip: Any, prompts: PromptLearner) -> None:
        super().__init__()
        self.clip: Any = clip  # open_clip's CLIP
        self.prompts = prompts
        layers = len(clip.transformer.resblocks)
        if prompts.depth > layers:
            raise UserError(f"depth {prompts.depth} exceeds the text encoder's {layers} layers", field="depth")
        context_length = clip.positional_embedding.shape[0]
        placeholder = " ".join(["X"] * prompts.n_ctx)
        texts = [f"{placeholder} {NORMAL_TEMPLATE}", f"{placeholder} {ANOMALOUS_TEMPLATE}"]
        needed = int(open_clip.tokenize(texts, context_length=prompts.n_ctx + 16).ne(0).sum(dim=-1).max())
        if needed > context_length:
            raise UserError(f"n_ctx {prompts.n_ctx} does not fit the text encoder's context of {context_length} tokens",
                            field="n_ctx")
        tokens = open_clip.tokenize(texts, context_length=context_length)
        self.register_buffer("tokens", tokens, persistent=False)

    def forward(self, learned: tuple[torch.Tensor, list[torch.Tensor]] | None = None) -> torch.Tensor:
        """(2, E) L2-normalised text features: row 0 normal, row 1 anomalous. ``learned`` is the
        prompt learner's output (computed here when not given)."""
        clip, p = self.clip, self.prompts
        context, deep_prompts = learned if learned is not None else p()
        x = clip.token_embedding(self.tokens)
        ctx = context.to(x.dtype)
        x = torch.cat([x[:, :1], ctx, x[:, 1 + p.n_ctx:]], dim=1)
        x = x + clip.positional_embedding.to(x.dtype)
        mask = clip.attn_mask
        for index, block in enumerate(clip.transformer.resblocks):
            if 1 <= index < p.depth:
                deep = deep_prompts[index - 1].to(x.dtype).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :1], deep, x[:, 1 + p.t_n_ctx:]], dim=1)
            x = block_forward(block, x, mask)
        x = clip.ln_final(x)
        eot = x[torch.arange(x.shape[0], device=x.device), self.tokens.argmax(dim=-1)]
        return F.normalize(eot @ clip.text_projection, dim=-1)
