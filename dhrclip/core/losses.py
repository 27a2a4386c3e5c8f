"""Segmentation losses of docs/method.md §7 (as in AnomalyCLIP)."""
from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F

from .maps import TEMPERATURE, view_logits

_SMOOTH = 1e-5


def focal_loss(probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss on probabilities (no extra softmax), mean over pixels.

    probs: (B, C, H, W) class probabilities; target: (B, H, W) class indices.
    The one-hot target is clamped to [1e-5, 1-1e-5] and pt = Σ onehot·p + 1e-5.
    """
    c = probs.shape[1]
    p = probs.movedim(1, -1).reshape(-1, c)
    one_hot = torch.zeros_like(p).scatter_(1, target.reshape(-1, 1).long(), 1.0)
    one_hot = one_hot.clamp(_SMOOTH / (c - 1), 1.0 - _SMOOTH)
    pt = (one_hot * p).sum(dim=1) + _SMOOTH
    return (-(1 - pt).pow(gamma) * pt.log()).mean()


def dice_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - (2·Σ p·g + 1) / (Σ p + Σ g + 1) per image, averaged over the batch."""
    p, g = pred.flatten(1), target.flatten(1).to(pred.dtype)
    dice = (2 * (p * g).sum(dim=1) + 1) / (p.sum(dim=1) + g.sum(dim=1) + 1)
    return (1 - dice).mean()


def segmentation_loss(layer_maps: list[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
    """Σ over tapped layers of Focal(M, gt) + Dice(M_a, gt) + Dice(M_n, 1 - gt).

    layer_maps: (B, 2, T, T) each, channel 0 normal, 1 anomalous; masks: (B, T, T) in {0, 1}.
    """
    gt = masks.float()
    total = sum(focal_loss(m, gt) + dice_loss(m[:, 1], gt) + dice_loss(m[:, 0], 1 - gt) for m in layer_maps)
    return cast(torch.Tensor, total)


def image_loss(global_embedding: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the image label against the global view's logits alone (not the
    view mix of the image score), as the authors compute it (docs/method.md §7)."""
    return F.cross_entropy(view_logits(global_embedding, text) / TEMPERATURE, labels.long())
