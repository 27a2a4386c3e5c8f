"""The global view's resize: antialiased bicubic, as Pillow and ``F.interpolate(antialias=True)``
compute it, and the same weights as two matrix products for exported graphs.

ONNX's antialiased Resize (opset 18) is what the exporter writes for ``F.interpolate``; onnxruntime
runs it, but OpenVINO and TensorRT ignore the antialiasing (OpenVINO's maps came out up to 0.7
apart). Traced for export, the view is instead ``Wy · image · Wxᵀ`` with each axis's weights built
in the graph from the sizes, which every runtime computes alike.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .runtime import exporting

_A = -0.5  # the cubic kernel's coefficient in Pillow's antialiased resampling


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5, zero from |x| = 2 on."""
    x = x.abs()
    near = ((_A + 2) * x - (_A + 3)) * x * x + 1
    far = ((_A * x - 5 * _A) * x + 8 * _A) * x - 4 * _A
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resize_weights(size_in: int, size_out: int, device: torch.device) -> torch.Tensor:
    """(size_out, size_in) weights of antialiased bicubic resampling along one axis: output pixel
    i mixes the inputs around its centre (i + 0.5)·s, s = size_in / size_out, through the cubic
    kernel stretched by s when shrinking (that stretch is the antialiasing), rows summing to 1."""
    one = torch.ones(1, dtype=torch.float32, device=device)  # a tensor of static rank, for symbolic sizes
    scale = one * size_in / size_out
    stretch = torch.clamp(scale, min=1.0)
    centre = (torch.arange(size_out, device=device, dtype=torch.float32) + 0.5) * scale
    source = torch.arange(size_in, device=device, dtype=torch.float32) + 0.5
    weights = _cubic((source[None, :] - centre[:, None]) / stretch)
    return weights / weights.sum(dim=1, keepdim=True)


def resize_antialiased(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) float images resized to ``size`` with antialiased bicubic interpolation."""
    if not exporting():
        return F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)
    rows = resize_weights(images.shape[-2], size[0], images.device)
    cols = resize_weights(images.shape[-1], size[1], images.device)
    return rows[None, None] @ images @ cols.t()[None, None]  # explicit ranks: OpenVINO needs them
