"""Synthetic MVTec-layout datasets and tiny random CLIPs, for the demo, tests and benchmarks.

Nothing here pretends to be real data: textures and objects are procedural,
defects are painted, and the masks are exactly the painted pixels.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

TEXTURES = ("stripes", "checker", "grain", "waves", "dots", "weave")
DEFECTS = ("scratch", "blob", "hole")


def _texture(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(60, 200, size=3)
    period = rng.uniform(6, 14)
    if kind == "stripes":
        pattern = np.sin(2 * np.pi * (xx + 0.3 * yy) / period)
    elif kind == "checker":
        pattern = np.sign(np.sin(np.pi * xx / period) * np.sin(np.pi * yy / period))
    elif kind == "grain":
        pattern = cv2.GaussianBlur(rng.normal(size=(h, w)).astype(np.float32), (0, 0), 1.5) * 3
    elif kind == "waves":
        pattern = np.sin(2 * np.pi * xx / period + 2 * np.sin(2 * np.pi * yy / (3 * period)))
    elif kind == "dots":
        pattern = (np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period) > 0.6) * 2.0 - 1
    elif kind == "weave":
        pattern = np.where((xx // period + yy // period) % 2 == 0, np.sin(2 * np.pi * xx / period),
                           np.sin(2 * np.pi * yy / period))
    else:
        raise ValueError(f"unknown texture {kind}")
    img = base[None, None, :] + 35 * pattern[..., None] + rng.normal(0, 4, size=(h, w, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def _object(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    img = np.full((h, w, 3), rng.uniform(20, 60, size=3), dtype=np.float32)
    color = tuple(float(c) for c in rng.uniform(120, 230, size=3))
    c, r = (w // 2, h // 2), int(min(h, w) * 0.32)
    if kind == "disk":
        cv2.circle(img, c, r, color, -1)
    elif kind == "ring":
        cv2.circle(img, c, r, color, max(3, r // 3))
    elif kind == "square":
        cv2.rectangle(img, (c[0] - r, c[1] - r), (c[0] + r, c[1] + r), color, -1)
    elif kind == "pill":
        cv2.ellipse(img, c, (r, r // 2), 20, 0, 360, color, -1)
    else:
        raise ValueError(f"unknown object {kind}")
    img += rng.normal(0, 3, size=(h, w, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_image(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A defect-free RGB image of a texture or object class."""
    return _texture(kind, h, w, rng) if kind in TEXTURES else _object(kind, h, w, rng)


def paint_defect(img: np.ndarray, defect: str, rng: np.random.Generator,
                 color: tuple[int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Paint a defect on a copy of ``img`` (in ``color``, else the defect type's own); returns
    the image and its bool mask."""
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    cy, cx = int(rng.integers(h // 5, 4 * h // 5)), int(rng.integers(w // 5, 4 * w // 5))
    size = max(3, int(min(h, w) * rng.uniform(0.06, 0.14)))
    if defect == "scratch":
        angle = rng.uniform(0, np.pi)
        dy, dx = int(np.sin(angle) * size * 2), int(np.cos(angle) * size * 2)
        cv2.line(mask, (cx - dx, cy - dy), (cx + dx, cy + dy), 1, max(2, size // 3))
    elif defect == "blob":
        cv2.ellipse(mask, (cx, cy), (size, max(2, size // 2)), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif defect == "hole":
        cv2.circle(mask, (cx, cy), size, 1, -1)
    else:
        raise ValueError(f"unknown defect {defect}")
    color = color or {"scratch": (250, 250, 250), "blob": (200, 40, 40), "hole": (5, 5, 5)}[defect]
    out = img.copy()
    out[mask.astype(bool)] = color
    return out, mask.astype(bool)


def write_mvtec_dataset(root: Path, classes: list[str], n_good: int = 4, n_defect: int = 4, n_train: int = 2,
                        size: tuple[int, int] = (96, 96), seed: int = 0,
                        defect_color: tuple[int, int, int] | None = None) -> Path:
    """Write an MVTec-layout dataset of synthetic classes under ``root``; ``defect_color`` paints
    every defect in one colour instead of one per defect type."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    h, w = size
    for cls in classes:
        for split, count in (("train", n_train), ("test", n_good)):
            folder = root / cls / split / "good"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                cv2.imwrite(str(folder / f"{i:03d}.png"), synthetic_image(cls, h, w, rng)[..., ::-1])
        for i in range(n_defect):
            defect = DEFECTS[i % len(DEFECTS)]
            img, mask = paint_defect(synthetic_image(cls, h, w, rng), defect, rng, defect_color)
            folder, gt = root / cls / "test" / defect, root / cls / "ground_truth" / defect
            folder.mkdir(parents=True, exist_ok=True)
            gt.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{i:03d}.png"), img[..., ::-1])
            cv2.imwrite(str(gt / f"{i:03d}_mask.png"), mask.astype(np.uint8) * 255)
    return root


def tiny_clip(seed: int = 0, vision_width: int = 128, vision_layers: int = 4, image_size: int = 56,
              text_width: int = 64, text_layers: int = 4, embed_dim: int = 64) -> CLIP:
    """A small randomly initialised OpenAI-style CLIP (QuickGELU, patch 14, CLIP's tokenizer)."""
    torch.manual_seed(seed)
    return CLIP(embed_dim,
                vision_cfg=CLIPVisionCfg(image_size=image_size, layers=vision_layers, width=vision_width,
                                         patch_size=14, head_width=min(64, vision_width)),
                text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=text_width,
                                     heads=max(1, text_width // 64), layers=text_layers),
                quick_gelu=True).eval()


def save_openai_format(model: CLIP, path: Path) -> Path:
    """Save ``model`` as a plain OpenAI-format state dict (the key layout of OpenAI's files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, path)
    return path
