"""The one inference path: batches of canvases, maps at their images' sizes, few-shot banks built from images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_items, settings, small_config

from dhrclip import DHRCLIP, EvalConfig, RunOptions, evaluate
from dhrclip.core.grid import AutoGrid
from dhrclip.data.canvases import CanvasDataset, Masks
from dhrclip.data.meta import read_meta
from dhrclip.detector.inference import iter_batches


def test_batch_size_does_not_change_maps_or_scores(clip_file, target_data):
    items = [i for v in read_meta(target_data, "test").values() for i in v]
    torch.manual_seed(0)
    model = DHRCLIP.create(small_config(clip_file), device="cpu")
    (maps1, masks1, scores1), (maps5, masks5, scores5) = run_items(model, items, 1), run_items(model, items, 5)
    assert np.allclose(maps1.astype(np.float32), maps5.astype(np.float32), atol=1e-3)  # float16 storage
    assert np.allclose(scores1, scores5, atol=1e-5)
    assert np.array_equal(masks1, masks5)


def test_auto_tests_in_batches_at_each_images_own_size(painted, tmp_path):
    checkpoint, data = painted
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    items = [item for cls in read_meta(data).values() for item in cls]
    run = RunOptions(batch_size=9, num_workers=0)
    dataset = CanvasDataset(items, AutoGrid(model.config.patch_image_size, 9), run, masks=Masks.SCORED)
    batches = list(iter_batches(model.model, dataset))
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
    fixed = evaluate(model, settings(EvalConfig, save_path=tmp_path / "fixed", **common))
    auto = evaluate(model, settings(EvalConfig, save_path=tmp_path / "auto", grid="auto", vis=True, **common))
    assert fixed["mean"]["pixel_auroc"] > 0.75  # the checkpoint does see the defects (81 measured)
    assert auto["mean"]["pixel_auroc"] >= fixed["mean"]["pixel_auroc"] - 0.005
    assert auto["test_config"]["grid"] == "auto"
    figures = list((tmp_path / "auto" / "vis").rglob("*.png"))
    assert len(figures) == len(items)


def test_bank_tokens_and_few_shot_map_by_hand(checkpoint, goods):
    """The bank holds every patch token of every reference view; the few-shot map of an image is
    1 − its tokens' nearest similarity, which is 0 for an image in the bank and positive otherwise."""
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    few = model.with_reference(goods[:2], grid="fixed")
    bank = few.reference
    layers = len(model.config.features_list)
    feats = model.model.encode_views(torch.stack([_canvas(p, model) for p in goods[:2]]))
    for layer in range(layers):
        want = torch.nn.functional.normalize(feats.global_tokens[layer][:, 1:].flatten(0, 1).float(), dim=-1)
        assert torch.allclose(bank.global_tokens[layer], want, atol=1e-6)
        tiles = model.model.fixed_grid.tiles.count
        assert len(bank.tile_tokens[layer]) == 2 * tiles * (feats.tile_tokens[layer].shape[1] - 1)
    assert bank.global_owner.tolist() == [0] * (len(bank.global_owner) // 2) + [1] * (len(bank.global_owner) // 2)
    inside = few.model.few_shot_maps(model.model.encode_views(_canvas(goods[0], model)[None]))
    outside = few.model.few_shot_maps(model.model.encode_views(_canvas(goods[3], model)[None]))
    assert float(inside.abs().max()) < 1e-5 and float(outside.min()) > 0


def _canvas(path, model):
    from dhrclip.data.canvases import to_canvas
    from dhrclip.data.images import load_rgb

    return to_canvas(load_rgb(path), model.config.target_image_size)


def test_non_finite_maps_are_blamed_on_the_precision_only_below_fp32(checkpoint, goods):
    """Below fp32, overflow is the likely cause and fp32 the cure; in fp32 it is not, and the
    message does not send the user to a setting they already have."""
    from dhrclip.detector.inference import iter_predictions
    from dhrclip.errors import UserError

    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu", precision="fp32")
    with torch.no_grad():
        model.model.clip.visual.ln_post.weight.fill_(float("nan"))
    run = RunOptions(batch_size=2, num_workers=0)
    with pytest.raises(UserError, match="contains NaN or Inf in fp32: the weights or the prompts") as info:
        list(iter_predictions(model.model, goods[:2], model.grid_for(run), run))
    assert "try precision" not in str(info.value)
    model.model.precision = torch.bfloat16
    with pytest.raises(UserError, match="contains NaN or Inf at bfloat16; try precision fp32") as info:
        list(iter_predictions(model.model, goods[:2], model.grid_for(run), run))
    assert info.value.field == "precision"
