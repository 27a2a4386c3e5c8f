"""Figures: input | heatmap overlay | outline, written as PNG with OpenCV."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .data import Item, load_rgb

_TITLE_H = 22


def heatmap_overlay(image: np.ndarray, amap: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """Blend a JET-coloured [0, 1] map over an RGB uint8 image of the same size."""
    colored = cv2.applyColorMap(np.clip(amap * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return cv2.addWeighted(image, 1 - weight, colored, weight, 0)


def outline(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (0, 255, 0)) -> np.ndarray:
    """Draw the contours of a bool mask on a copy of an RGB image."""
    out = np.ascontiguousarray(image.copy())
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, color, max(1, image.shape[0] // 200))
    return out


def panels(named: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """Side-by-side RGB panels, each under a small title."""
    columns = []
    for title, img in named:
        header = np.full((_TITLE_H, img.shape[1], 3), 255, np.uint8)
        cv2.putText(header, title, (4, _TITLE_H - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        columns.append(np.vstack([header, img]))
    return np.hstack(columns)


def save_rgb(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image[..., ::-1]):
        raise OSError(f"could not write {path}")


def canvas_rgb(path: Path, size: int) -> np.ndarray:
    """The image as the model saw it: RGB resized to the canvas."""
    return np.asarray(load_rgb(path).resize((size, size)), dtype=np.uint8)


def save_test_figures(folder: Path, items: list[Item], maps: np.ndarray, masks: np.ndarray | None,
                      scores: np.ndarray) -> None:
    """Per test image: input | heatmap | ground truth outline (green)."""
    for i, item in enumerate(items):
        amap = maps[i].astype(np.float32)
        image = canvas_rgb(item.image, amap.shape[0])
        row = [("input", image), (f"score {scores[i]:.3f}", heatmap_overlay(image, amap))]
        if masks is not None:
            row.append(("ground truth", outline(image, masks[i])))
        name = f"{item.specie_name}_{item.image.stem}.png" if item.specie_name else f"{item.image.stem}.png"
        save_rgb(Path(folder) / name, panels(row))
