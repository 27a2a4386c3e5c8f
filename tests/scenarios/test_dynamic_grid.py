"""grid="auto": a tile grid per image at its own aspect ratio, against the fixed square canvas."""
from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DEFECT, SMALL_MODEL, settings
from PIL import Image

from dhrclip import DHRCLIP, PredictConfig, predict
from dhrclip.data.synthetic import synthetic_image


class RednessVision(torch.nn.Module):
    """A stand-in vision tower that sees exactly one thing, red paint, per patch: every view's
    tokens are (1 - r, r, 0, ...) with r the patch's share of red pixels. Everything around it
    (canvas, placement, views, stitching, smoothing, cropping, resizing) is the real pipeline."""

    patch_size = 14

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width

    def forward(self, views):
        from dhrclip.core.vision import VisionOutput

        redness = views[:, 0] - (views[:, 1] + views[:, 2]) / 2  # the paint: about 2.6 after normalisation
        r = F.avg_pool2d(torch.sigmoid(8 * (redness - 1.3))[:, None], self.patch_size)[:, 0]
        grid = tuple(r.shape[-2:])
        feats = torch.zeros(*r.shape, self.width)
        feats[..., 0], feats[..., 1] = 1 - r, r
        tokens = torch.cat([feats.mean(dim=(1, 2))[:, None], feats.flatten(1, 2)], dim=1)
        return VisionOutput(tokens=[tokens, tokens], embedding=tokens[:, 0], grid=grid)


def blob_aspect(amap, cy, cx, radius):
    """Width / height of the thresholded blob around (cy, cx): half-way between the window's
    median and its peak."""
    top, left = max(0, cy - 3 * radius), max(0, cx - 3 * radius)
    window = amap[top:cy + 3 * radius, left:cx + 3 * radius]
    level = np.median(window) + 0.5 * (window.max() - np.median(window))
    _, labels, stats, _ = cv2.connectedComponentsWithStats((window > level).astype(np.uint8))
    which = labels[cy - top, cx - left]
    assert which > 0, "the defect's centre is not in the blob"
    return stats[which, cv2.CC_STAT_WIDTH] / stats[which, cv2.CC_STAT_HEIGHT]


def test_a_round_defect_stays_round_in_the_auto_map(checkpoint, monkeypatch):
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    width = model.model.clip.text_projection.shape[1]
    model.model.vision = RednessVision(width)
    text = torch.zeros(2, width)
    text[0, 0] = text[1, 1] = 1.0
    monkeypatch.setattr(model.model, "text_features", lambda learned=None: text)
    image = synthetic_image("checker", 100, 400, np.random.default_rng(0))
    cv2.circle(image, (250, 50), 18, DEFECT, -1)
    auto = model.predict(image, grid="auto", max_tiles=9).anomaly_map
    fixed = model.predict(image, grid="fixed").anomaly_map
    assert auto.shape == fixed.shape == (100, 400)
    assert 1 / 1.3 <= blob_aspect(auto, 50, 250, 18) <= 1.3
    assert blob_aspect(fixed, 50, 250, 18) > 1.3  # the squashed square canvas stretches it


def test_a_square_image_on_a_g_by_g_grid_matches_the_fixed_grid(checkpoint, clip_file):
    p = SMALL_MODEL["patch_image_size"]
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu", target_image_size=2 * p)  # T = g·P, g = 2
    image = synthetic_image("disk", 2 * p, 2 * p, np.random.default_rng(1))
    fixed = model.predict(image, grid="fixed")
    auto = model.predict(image, grid="auto", max_tiles=4)
    assert auto.grid == (2, 2) and fixed.grid == (2, 2)
    assert np.allclose(auto.anomaly_map, fixed.anomaly_map, atol=1e-6)
    assert auto.score == pytest.approx(fixed.score, abs=1e-6)


def test_predict_writes_a_map_at_a_wide_frames_own_size_and_records_the_grid(checkpoint, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    frame = synthetic_image("stripes", 1024, 2448, np.random.default_rng(2))
    Image.fromarray(frame).save(images / "frame.png")
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    predict(model, settings(PredictConfig, input=str(images), save_path=tmp_path / "out", num_workers=0))
    assert np.load(tmp_path / "out" / "maps" / "frame_png.npy").shape == (1024, 2448)
    with open(tmp_path / "out" / "predictions.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    p = model.config.patch_image_size
    from dhrclip.core.grid import choose_grid
    assert (int(row["rows"]), int(row["cols"])) == choose_grid(1024, 2448, p, 9) == (2, 4)




