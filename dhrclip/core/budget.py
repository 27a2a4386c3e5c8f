"""How much one forward of the vision tower takes at once on the CPU. Torch-free, so that the
ONNX runtime splits its batches by the rule the PyTorch forward chunks its views by.

With more than ``CPU_ACTIVATIONS`` token activations (tokens × width) in one forward, the small
models' attention spills out of the caches and each view costs up to 60% more (a tiny CLIP at
S=336: 9.9 ms per view in forwards of 4 views, 15.9 ms in one of 40; ViT-B-16 is flat either way).
"""
from __future__ import annotations

CPU_ACTIVATIONS = 300_000


def cpu_views(patches: int, width: int) -> int:
    """How many views of ``patches`` patch tokens (and a class token) of ``width`` channels one CPU
    forward takes (at least one)."""
    return max(1, CPU_ACTIVATIONS // ((patches + 1) * width))
