"""Attention over open_clip's ``nn.MultiheadAttention`` weights, including the V-V
attention of DPAM (docs/method.md §3), and the transformer block that both the
text and the vision tower run.

The weights stay in open_clip's modules; these functions only read them, so one
set of frozen weights serves both the original and the V-V stream, and the
same code runs whatever ``batch_first`` open_clip chose.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, N, D) -> (B, H, N, D/H)."""
    b, n, d = x.shape
    return x.view(b, n, n_heads, d // n_heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, d) -> (B, N, H·d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _qkv(attn: nn.MultiheadAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    return _heads(q, attn.num_heads), _heads(k, attn.num_heads), _heads(v, attn.num_heads)


def self_attention(attn: nn.MultiheadAttention, x: torch.Tensor,
                   attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Plain multi-head self-attention of (B, N, D) tokens; ``attn_mask`` is additive."""
    q, k, v = _qkv(attn, x)
    mask = attn_mask.to(q.dtype) if attn_mask is not None else None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attn.out_proj(_merge(out))


def dual_attention(attn: nn.MultiheadAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Original and V-V attention of the same (B, N, D) input, sharing one projection.

    V-V attention replaces query and key by the value projection:
    softmax(v·vᵀ·d_head^-0.5)·v, then the block's output projection. Attending
    from each token to tokens with similar values keeps local detail, which
    is what the anomaly maps need.
    """
    q, k, v = _qkv(attn, x)
    original = F.scaled_dot_product_attention(q, k, v)
    vv = F.scaled_dot_product_attention(v, v, v)
    both = attn.out_proj(_merge(torch.cat([original, vv], dim=0)))
    b = x.shape[0]  # sliced, not chunked: a chunk's size is a division the export tracer cannot prove
    return both[:b], both[b:]


def block_forward(block: Any, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One open_clip ``ResidualAttentionBlock`` on (B, N, D) tokens."""
    x = x + block.ls_1(self_attention(block.attn, block.ln_1(x), attn_mask))
    return x + block.ls_2(block.mlp(block.ln_2(x)))
