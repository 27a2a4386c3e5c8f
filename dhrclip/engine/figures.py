"""Figures: a header (file, score, decision), input | heatmap | outline panels, and a colour bar.

Heatmaps use a ``ColorScale`` fixed for a whole run, so a good part looks calm and a
defect looks hot; figures are at least ``DISPLAY_MIN`` pixels on their short side and at
most ``DISPLAY_MAX`` on their long side, so titles stay readable at any input size.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..data.images import load_rgb
from ..data.meta import Item
from ..errors import UserError
from ..files import atomic_write, safe_component, within

DISPLAY_MIN, DISPLAY_MAX = 256, 1024
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_LINE_H, _BAR_W = 24, 72


@dataclass(frozen=True)
class ColorScale:
    """Map values to [0, 1] for colouring: ``low`` is blue, ``high`` red, a threshold (if
    any) sits in the middle, green."""

    low: float
    high: float
    threshold: float | None = None

    @classmethod
    def around(cls, low: float, high: float, threshold: float | None = None) -> ColorScale:
        """The range [low, high], widened to put ``threshold`` in the middle."""
        if threshold is not None:
            span = max(threshold - low, high - threshold)
            low, high = threshold - span, threshold + span
        return cls(low, high if high > low else low + 1e-6, threshold)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        return np.clip((values - self.low) / (self.high - self.low), 0.0, 1.0)


def display_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) to draw an image at: small inputs upscaled, large ones downscaled."""
    scale = min(max(1.0, DISPLAY_MIN / min(height, width)), DISPLAY_MAX / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def heatmap_overlay(image: np.ndarray, unit_map: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """Blend a JET-coloured [0, 1] map over an RGB uint8 image of the same size."""
    colored = cv2.applyColorMap(np.clip(unit_map * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return cv2.addWeighted(image, 1 - weight, colored, weight, 0)


def outline(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (0, 255, 0)) -> np.ndarray:
    """Draw the contours of a bool mask on a copy of an RGB image."""
    out = np.ascontiguousarray(image.copy())
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, color, max(1, min(image.shape[:2]) // 150))
    return out


def _text_row(text: str, width: int, height: int = _LINE_H) -> np.ndarray:
    """A white strip with ``text``, shrunk to fit ``width``."""
    row = np.full((height, width, 3), 255, np.uint8)
    scale = 0.5
    while scale > 0.25 and cv2.getTextSize(text, _FONT, scale, 1)[0][0] > width - 8:
        scale -= 0.05
    cv2.putText(row, text, (4, height - 8), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return row


def colour_bar(height: int, scale: ColorScale) -> np.ndarray:
    """A vertical JET bar for ``scale``, labelled at the top, bottom and threshold."""
    bar = np.full((height, _BAR_W, 3), 255, np.uint8)
    ramp = np.linspace(1, 0, height)[:, None].repeat(16, axis=1)
    bar[:, :16] = cv2.applyColorMap((ramp * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    marks = [(scale.high, 0.0), (scale.low, 1.0)]
    if scale.threshold is not None:
        marks.append((scale.threshold, 0.5))
    for value, where in marks:
        y = int(np.clip(where * (height - 1), 10, height - 4))
        cv2.putText(bar, f"{value:.3g}", (19, y), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return bar


def panels(named: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """Side-by-side RGB panels, each under its title."""
    return np.hstack([np.vstack([_text_row(title, img.shape[1]), img]) for title, img in named])


def with_colour_bar(body: np.ndarray, scale: ColorScale) -> np.ndarray:
    """``body`` with the colour bar of ``scale`` on its right."""
    return np.hstack([body, colour_bar(body.shape[0], scale)])


def figure(header: str, named: list[tuple[str, np.ndarray]], scale: ColorScale) -> np.ndarray:
    """``header`` over the panels, with the colour bar of ``scale`` on the right."""
    body = with_colour_bar(panels(named), scale)
    return np.vstack([_text_row(header, body.shape[1], _LINE_H + 4), body])


def save_rgb(path: Path, image: np.ndarray) -> None:
    """An RGB image as a PNG (or the format ``path``'s suffix names), written atomically."""
    encoded, data = cv2.imencode(path.suffix or ".png", np.ascontiguousarray(image[..., ::-1]))
    if not encoded:
        raise UserError(f"cannot encode a figure as {path.suffix}: {path}")
    atomic_write(path, lambda f: f.write(data.tobytes()))


def to_display(image: np.ndarray, amap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and its map, resized together to the size figures draw them at."""
    h, w = display_size(*amap.shape)
    shown = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if h < image.shape[0] else cv2.INTER_CUBIC)
    return shown, cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)


def prediction_panels(shown: np.ndarray, amap: np.ndarray, scale: ColorScale,
                      pixel_threshold: float | None) -> list[tuple[str, np.ndarray]]:
    """input | heatmap | outline of ``map > pixel_threshold`` (without a threshold, no outline),
    from an image and map already at display size (``to_display``)."""
    row = [("input", shown), ("anomaly map", heatmap_overlay(shown, scale(amap)))]
    if pixel_threshold is not None:
        row.append((f"map > {pixel_threshold:.3g}", outline(shown, amap > pixel_threshold)))
    return row


def prediction_figure(image: np.ndarray, amap: np.ndarray, scale: ColorScale, name: str, score: float,
                      decision: str, pixel_threshold: float | None) -> np.ndarray:
    """predict.py's figure: a header over ``prediction_panels`` and the colour bar."""
    row = prediction_panels(*to_display(image, amap), scale, pixel_threshold)
    return figure(f"{name}   score {score:.3f}   {decision or 'no threshold set'}", row, scale)


def save_test_figure(path: Path, item: Item, amap: np.ndarray, mask: np.ndarray | None, score: float,
                     size: tuple[int, int], scale: ColorScale, bit_depth: int | None = None) -> None:
    """test.py's figure of one image (EvalConfig.vis) at ``path`` (``test_figure_path``): input |
    heatmap | ground truth (green), at the image's aspect ratio; ``scale`` is its class's, so a
    class's figures compare at a glance."""
    h, w = display_size(*size)
    image = np.asarray(load_rgb(item.image, bit_depth).resize((w, h)), dtype=np.uint8)
    amap = cv2.resize(amap.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    row = [("input", image), ("anomaly map", heatmap_overlay(image, scale(amap)))]
    if mask is not None:
        gt = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
        row.append(("ground truth", outline(image, gt)))
    label = "anomalous" if item.anomaly else "normal"
    shown = f"{item.specie_name}/{item.image.name}" if item.specie_name else item.image.name
    save_rgb(path, figure(f"{shown}   score {score:.3f}   label {label}", row, scale))


def test_figure_path(folder: Path, cls: str, item: Item, taken: set[Path]) -> Path:
    """Where test.py draws an image's figure: ``folder/<class>/<defect type>_<stem>.png``, every part
    made from the index reduced to a name that stays inside ``folder``; a name already ``taken``
    by another image gets the next free number."""
    stem = f"{item.specie_name}_{item.image.stem}" if item.specie_name else item.image.stem
    path = folder / safe_component(cls) / f"{safe_component(stem)}.png"
    k = 1
    while path in taken:
        k += 1
        path = path.with_name(f"{safe_component(stem)}-{k}.png")
    taken.add(path)
    return within(folder, path)
