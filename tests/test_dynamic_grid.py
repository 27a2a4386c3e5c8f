"""grid="auto": a tile grid per image at its own aspect ratio, against the fixed square canvas."""
from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import SMALL_MODEL, train_small
from dhrclip import DHRCLIP, EvalConfig, PredictConfig, evaluate, predict
from dhrclip.data.canvases import AutoGrid, CanvasDataset, read_meta
from dhrclip.data.indexing import mvtec_layout_index, write_meta
from dhrclip.detector.inference import iter_batches
from dhrclip.data.synthetic import synthetic_image, write_mvtec_dataset

DEFECT = (220, 30, 30)  # one colour for every painted defect, so a tiny CLIP can learn it


@pytest.fixture(scope="module")
def painted(tmp_path_factory, clip_file):
    """A checkpoint trained 12 epochs on square images with red defects, and a test set of 1:3 and
    3:1 images with the same defects."""
    root = tmp_path_factory.mktemp("grid")
    train_root = write_mvtec_dataset(root / "train", ["stripes", "disk"], n_good=3, n_defect=6, n_train=0,
                                     size=(112, 112), seed=3, defect_color=DEFECT)
    write_meta(train_root, mvtec_layout_index(train_root))
    test_root = root / "test"
    write_mvtec_dataset(test_root, ["checker"], n_good=3, n_defect=6, n_train=0, size=(64, 192), seed=4,
                        defect_color=DEFECT)
    write_mvtec_dataset(test_root, ["ring"], n_good=3, n_defect=6, n_train=0, size=(192, 64), seed=5,
                        defect_color=DEFECT)
    write_meta(test_root, mvtec_layout_index(test_root))
    train_small(train_root, root / "ckpt", clip_file, epochs=12)
    return root / "ckpt" / "epoch_12.pth", test_root


def test_auto_tests_in_batches_at_each_images_own_size(painted, tmp_path):
    checkpoint, data = painted
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    items = [item for cls in read_meta(data).values() for item in cls]
    dataset = CanvasDataset(items, AutoGrid(model.config.patch_image_size, 9), regions=True, native_masks=True)
    batches = list(iter_batches(model.model, dataset, batch_size=9))
    assert sorted(len(b.index) for b in batches) == [9, 9]  # grouped by grid: every batch full
    for batch in batches:
        assert len(set(batch.grids)) == 1
        for k in range(len(batch.index)):
            h, w = (int(v) for v in batch.sizes[k])
            assert tuple(batch.masks[k].shape) == (h, w)  # masks at the image's own size
            rows, cols = batch.grids[k]
            assert (rows, cols) == ((1, 3) if w > h else (3, 1))
            aspect = batch.maps[k].shape[1] / batch.maps[k].shape[0]  # the map of the image's box keeps its aspect
            assert aspect == pytest.approx(w / h, rel=0.05)

    common = dict(data_path=data, batch_size=4, num_workers=0)
    fixed = evaluate(model, EvalConfig(save_path=tmp_path / "fixed", **common))
    auto = evaluate(model, EvalConfig(save_path=tmp_path / "auto", grid="auto", vis=True, **common))
    assert fixed["mean"]["pixel_auroc"] > 0.75  # the checkpoint does see the defects (81 measured)
    assert auto["mean"]["pixel_auroc"] >= fixed["mean"]["pixel_auroc"] - 0.005
    assert auto["test_config"]["grid"] == "auto"
    figures = list((tmp_path / "auto" / "vis").rglob("*.png"))
    assert len(figures) == len(items)


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
    predict(model, PredictConfig(input=str(images), save_path=tmp_path / "out", num_workers=0))
    assert np.load(tmp_path / "out" / "maps" / "frame_png.npy").shape == (1024, 2448)
    with open(tmp_path / "out" / "predictions.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    p = model.config.patch_image_size
    from dhrclip.core.tiling import choose_grid
    assert (int(row["rows"]), int(row["cols"])) == choose_grid(1024, 2448, p, 9) == (2, 4)


def test_training_with_auto_groups_batches_by_grid(painted, tmp_path, clip_file, monkeypatch):
    from dhrclip.core.network import DHRCLIPModel

    _, data = painted
    shapes = []
    encode = DHRCLIPModel.encode_views

    def counted(self, canvas, tiles=None, placements=None):
        shapes.append(tuple(canvas.shape[-2:]))
        return encode(self, canvas, tiles, placements)

    monkeypatch.setattr(DHRCLIPModel, "encode_views", counted)
    history = train_small(data, tmp_path / "ckpt", clip_file, epochs=2, grid="auto")
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    assert set(shapes) == {(70, 210), (210, 70)}  # every batch holds one grid's canvases (1x3 or 3x1 tiles)
    assert len(shapes) == -(-9 // 4) * 2  # epoch 1 only: 9 images of each grid in batches of 4; then the cache
    saved = torch.load(tmp_path / "ckpt" / "epoch_2.pth", weights_only=False)
    assert saved["train_config"]["grid"] == "auto"


def test_auto_refuses_legacy_aupro(painted, tmp_path):
    from dhrclip.errors import UserError

    checkpoint, data = painted
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    with pytest.raises(UserError, match="legacy") as info:
        evaluate(model, EvalConfig(data_path=data, save_path=tmp_path, grid="auto", aupro="legacy"))
    assert info.value.field == "aupro"
