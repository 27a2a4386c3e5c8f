"""Figures: a header (file, score, decision), input | heatmap | outline panels, and a colour bar,
drawn with numpy and Pillow alone (the exported model's runtime draws them too).

Heatmaps use a ``ColorScale`` fixed for a whole run, so a good part looks calm and a
defect looks hot; figures are at least ``DISPLAY_MIN`` pixels on their short side and at
most ``DISPLAY_MAX`` on their long side, so titles stay readable at any input size.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data.images import load_rgb, resize_bilinear
from ..data.meta import Item
from ..errors import UserError
from ..files import atomic_write, safe_component, within

DISPLAY_MIN, DISPLAY_MAX = 256, 1024
# a panel's short side is at least DISPLAY_THIN pixels, its long side then growing up to DISPLAY_LONGEST:
# a 10000×200 line-scan strip is drawn 3072×61, not 1024×20
DISPLAY_THIN, DISPLAY_LONGEST = 64, 3 * DISPLAY_MAX
_LINE_H, _BAR_W = 24, 72
_JET_CENTRES = np.array([0.75, 0.5, 0.25])  # where red, green and blue peak on the JET scale


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
    """(height, width) to draw an image at: small inputs upscaled, large ones downscaled, and
    thin strips kept thick enough to see."""
    short, long = min(height, width), max(height, width)
    scale = min(max(1.0, DISPLAY_MIN / short), DISPLAY_MAX / long)
    scale = max(scale, min(DISPLAY_THIN / short, DISPLAY_LONGEST / long))
    return max(1, round(height * scale)), max(1, round(width * scale))


def jet(unit_map: np.ndarray) -> np.ndarray:
    """RGB uint8 colours of the JET map (blue, cyan, green, yellow, red) for values in [0, 1]."""
    levels = np.clip(unit_map, 0.0, 1.0)[..., None]
    channels = np.clip(1.5 - 4 * np.abs(levels - _JET_CENTRES), 0.0, 1.0)  # each a trapezoid around its peak
    return np.rint(channels * 255).astype(np.uint8)


def heatmap_overlay(image: np.ndarray, unit_map: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """Blend a JET-coloured [0, 1] map over an RGB uint8 image of the same size."""
    mixed = image.astype(np.float32) * (1 - weight) + jet(unit_map).astype(np.float32) * weight
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def _grow(mask: np.ndarray, steps: int, shrink: bool = False) -> np.ndarray:
    """``mask`` dilated (or eroded) by ``steps`` pixels with a 3×3 square."""
    out = mask.copy()
    for _ in range(steps):
        padded = np.pad(out, 1)  # nothing outside the image: a mask on its border still has an edge there
        views = [padded[1 + dy:padded.shape[0] - 1 + dy, 1 + dx:padded.shape[1] - 1 + dx]
                 for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        out = np.logical_and.reduce(views) if shrink else np.logical_or.reduce(views)
    return out


def outline(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (0, 255, 0)) -> np.ndarray:
    """Draw the edge of a bool mask on a copy of an RGB image, about 1/150 of its short side thick."""
    mask = mask.astype(bool)
    edge = mask & ~_grow(mask, 1, shrink=True)
    thickness = max(1, min(image.shape[:2]) // 150)
    out = image.copy()
    out[_grow(edge, thickness // 2)] = color
    return out


@cache
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _draw_text(canvas: np.ndarray, text: str, left: int, baseline: int, size: int) -> np.ndarray:
    """``canvas`` with black ``text`` drawn from (``left``, ``baseline``)."""
    img = Image.fromarray(canvas)
    ImageDraw.Draw(img).text((left, baseline), text, fill=(0, 0, 0), font=_font(size), anchor="ls")
    return np.asarray(img)


def _text_row(text: str, width: int, height: int = _LINE_H) -> np.ndarray:
    """A white strip with ``text``, shrunk to fit ``width``."""
    size = 15
    while size > 8 and ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=_font(size)) > width - 8:
        size -= 1
    return _draw_text(np.full((height, width, 3), 255, np.uint8), text, 4, height - 7, size)


def colour_bar(height: int, scale: ColorScale) -> np.ndarray:
    """A vertical JET bar for ``scale``, labelled at the top, bottom and threshold."""
    bar = np.full((height, _BAR_W, 3), 255, np.uint8)
    bar[:, :16] = jet(np.linspace(1, 0, height)[:, None].repeat(16, axis=1))
    marks = [(scale.high, 0.0), (scale.low, 1.0)]
    if scale.threshold is not None:
        marks.append((scale.threshold, 0.5))
    for value, where in marks:
        y = int(np.clip(where * (height - 1), 10, height - 4))
        bar = _draw_text(bar, f"{value:.3g}", 19, y, 11)
    return bar


def panels(named: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """RGB panels, each under its title: side by side, or one above the other for images more
    than twice as wide as high, so a wide strip does not make a figure wider still."""
    titled = [np.vstack([_text_row(title, img.shape[1]), img]) for title, img in named]
    height, width = named[0][1].shape[:2]
    return np.vstack(titled) if width > 2 * height else np.hstack(titled)


def with_colour_bar(body: np.ndarray, scale: ColorScale) -> np.ndarray:
    """``body`` with the colour bar of ``scale`` on its right."""
    return np.hstack([body, colour_bar(body.shape[0], scale)])


def figure(header: str, named: list[tuple[str, np.ndarray]], scale: ColorScale) -> np.ndarray:
    """``header`` over the panels, with the colour bar of ``scale`` on the right."""
    body = with_colour_bar(panels(named), scale)
    return np.vstack([_text_row(header, body.shape[1], _LINE_H + 4), body])


def save_rgb(path: Path, image: np.ndarray) -> None:
    """An RGB image as a PNG (or the format ``path``'s suffix names), written atomically."""
    buffer = io.BytesIO()
    try:
        Image.fromarray(image).save(buffer, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    except (KeyError, ValueError, OSError) as exc:
        raise UserError(f"cannot encode a figure as {path.suffix}: {path} ({exc})") from exc
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def to_display(image: np.ndarray, amap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and its map, resized together to the size figures draw them at."""
    h, w = display_size(*amap.shape)
    shown = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC))
    return shown, resize_bilinear(amap.astype(np.float32), h, w)


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
    amap = resize_bilinear(amap.astype(np.float32), h, w)
    row = [("input", image), ("anomaly map", heatmap_overlay(image, scale(amap)))]
    if mask is not None:
        gt = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)) > 0
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
