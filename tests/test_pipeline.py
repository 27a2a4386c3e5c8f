"""End to end: testing against the independent implementation of the method, batch invariance, training."""
import json

import numpy as np
import pytest
import torch

from conftest import SMALL, SMALL_MODEL, small_config, train_small
from dhrclip import DHRCLIP, EvalConfig, evaluate
from dhrclip.detector.checkpoint import read_checkpoint
from dhrclip import cli
from dhrclip.data.canvases import CanvasDataset, read_meta, resize_mask
from dhrclip.data.images import load_mask
from dhrclip.detector.inference import iter_batches
from spec_reference import slow_image, slow_pixel_metrics, slow_text


# A reference-format checkpoint has no settings; these are the tiny model's (its prompt shapes come from the file).
SMALL_GEOMETRY = {k: v for k, v in SMALL_MODEL.items() if k not in ("depth", "n_ctx", "t_n_ctx")}


def run_items(model, items, batch_size=4):
    """(maps float16, masks, scores) of ``items`` through the library's one inference path."""
    maps, masks, scores = [], [], []
    dataset = CanvasDataset(items, model.config.target_image_size, with_masks=True)
    for batch in iter_batches(model.model, dataset, batch_size, map_norm="per-image"):
        maps.append(batch.maps.half().numpy())
        masks.append(batch.masks.numpy())
        scores.append(batch.scores)
    return np.concatenate(maps), np.concatenate(masks), np.concatenate(scores)


def reference_checkpoint(path, width=64, n_ctx=6, depth=3, t_n_ctx=2, seed=7):
    """A prompt checkpoint in the reference/AnomalyCLIP layout, unused tensors included."""
    g = torch.Generator().manual_seed(seed)
    state = {
        "ctx_pos": torch.randn(1, 1, n_ctx, width, generator=g) * 0.5,
        "ctx_neg": torch.randn(1, 1, n_ctx, width, generator=g) * 0.5,
        "token_prefix_pos": torch.zeros(1, 1, 1, width),
        "token_suffix_neg": torch.zeros(1, 1, 70, width),
    }
    for i in range(depth - 1):
        state[f"compound_prompts_text.{i}"] = torch.randn(t_n_ctx, width, generator=g) * 0.5
        state[f"compound_prompt_projections.{i}.weight"] = torch.randn(896, width, generator=g)
        state[f"compound_prompt_projections.{i}.bias"] = torch.zeros(896)
    torch.save({"prompt_learner": state}, path)
    return state


def test_test_py_agrees_with_independent_implementation_of_the_method(tmp_path, clip_file, target_data):
    ckpt = tmp_path / "epoch_15.pth"
    state = reference_checkpoint(ckpt)
    argv = ["--data_path", str(target_data), "--save_path", str(tmp_path / "out"), "--checkpoint_path", str(ckpt),
            "--pretrained", str(clip_file), *SMALL]
    cli.test_main(argv)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["classes"].keys() == {"checker", "ring"}
    assert set(saved["mean"]) == {"pixel_auroc", "pixel_aupro", "pixel_f1max", "pixel_ap",
                                  "image_auroc", "image_ap", "image_f1max"}

    clip = DHRCLIP.create(small_config(clip_file), device="cpu").model.clip
    with torch.no_grad():
        text = slow_text(clip, state["ctx_pos"][0, 0], state["ctx_neg"][0, 0],
                         [state[f"compound_prompts_text.{i}"] for i in range(2)])
        for cls, items in read_meta(target_data, "test").items():
            maps, masks, scores = [], [], []
            for item in items:
                m, s = slow_image(clip, text, item.image, S=56, P=70, T=112, layers=[2, 4], dpam=3)
                maps.append(m)
                scores.append(s)
                mask = load_mask(item.masks) if item.masks else np.zeros(m.shape, bool)
                masks.append(resize_mask(mask, 112).numpy() if item.masks else mask)
            want = slow_pixel_metrics(np.stack(masks), np.stack(maps))
            for name, value in want.items():
                assert saved["classes"][cls][name] == pytest.approx(value, abs=0.005), (cls, name)


def test_batch_size_does_not_change_maps_or_scores(clip_file, target_data):
    items = [i for v in read_meta(target_data, "test").values() for i in v]
    torch.manual_seed(0)
    model = DHRCLIP.create(small_config(clip_file), device="cpu")
    (maps1, masks1, scores1), (maps5, masks5, scores5) = run_items(model, items, 1), run_items(model, items, 5)
    assert np.allclose(maps1.astype(np.float32), maps5.astype(np.float32), atol=1e-3)  # float16 storage
    assert np.allclose(scores1, scores5, atol=1e-5)
    assert np.array_equal(masks1, masks5)


def test_encoding_batched_equals_one_by_one(clip_file):
    model = DHRCLIP.create(small_config(clip_file), device="cpu").model
    canvas = torch.randint(0, 256, (3, 3, 112, 112), dtype=torch.uint8)
    text = model.text_features()
    together = model.anomaly_maps(model.encode_views(canvas), text)
    alone = torch.cat([model.anomaly_maps(model.encode_views(canvas[i:i + 1]), text) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)


def losses_of(history):
    return [epoch["loss"] for epoch in history]


def test_feature_cache_modes_give_the_same_losses(tmp_path, clip_file, source_data):
    losses = {mode: losses_of(train_small(source_data, tmp_path / mode, clip_file, epochs=3, feature_cache=mode))
              for mode in ("off", "memory", "disk")}
    assert len(losses["off"]) == 3 and losses["off"][2] < losses["off"][0]
    assert np.allclose(losses["memory"], losses["off"], rtol=1e-5)
    assert np.allclose(losses["disk"], losses["off"], rtol=1e-5)
    assert not (tmp_path / "disk" / "feature_cache").exists()


def test_resume_reaches_the_same_state_as_an_uninterrupted_run(tmp_path, clip_file, source_data):
    full = losses_of(train_small(source_data, tmp_path / "full", clip_file, epochs=3))
    first = losses_of(train_small(source_data, tmp_path / "part", clip_file, epochs=2))
    rest = losses_of(train_small(source_data, tmp_path / "part", clip_file, epochs=3, resume=tmp_path / "part"))
    assert np.allclose(first + rest, full, rtol=1e-6)
    a = read_checkpoint(tmp_path / "full" / "epoch_3.pth").prompts
    b = read_checkpoint(tmp_path / "part" / "epoch_3.pth").prompts
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_trained_checkpoint_is_tested_end_to_end(tmp_path, clip_file, source_data, target_data):
    train_small(source_data, tmp_path / "ckpt", clip_file, epochs=2)
    ckpt = read_checkpoint(tmp_path / "ckpt")
    assert ckpt.state["epoch"] == 2 and ckpt.config.depth == 3
    model = DHRCLIP.from_checkpoint(tmp_path / "ckpt", device="cpu")
    config = dict(data_path=target_data, save_path=tmp_path / "res", batch_size=4, num_workers=0)
    results = evaluate(model, EvalConfig(**config, vis=True))
    assert all(0.0 <= v <= 1.0 for v in results["mean"].values())
    assert "mean" in (tmp_path / "res" / "log.txt").read_text()
    figures = sorted((tmp_path / "res" / "vis" / "ring").glob("*.png"))
    assert len(figures) == 7 and any(f.name.startswith("good_") for f in figures)

    legacy = evaluate(model, EvalConfig(**config, aupro="legacy", metrics="pixel-level", classes=["ring"]))
    assert list(legacy["classes"]) == ["ring"]
    ring, exact_ring = legacy["classes"]["ring"], results["classes"]["ring"]
    assert ring["image_auroc"] is None and ring["pixel_auroc"] == pytest.approx(exact_ring["pixel_auroc"])
    assert ring["pixel_aupro"] is not None and ring["pixel_aupro"] != exact_ring["pixel_aupro"]


def test_bf16_pixel_auroc_is_within_0_2_points_of_fp32(tmp_path, clip_file, target_data):
    from dhrclip.metrics import pixel_metrics
    items = [i for v in read_meta(target_data, "test").values() for i in v]
    reference_checkpoint(tmp_path / "prompts.pth")
    aurocs = {}
    for precision in ("fp32", "bf16"):
        model = DHRCLIP.from_checkpoint(tmp_path / "prompts.pth", pretrained=str(clip_file), device="cpu",
                                        precision=precision, **SMALL_GEOMETRY)
        maps, masks, _ = run_items(model, items)
        aurocs[precision] = pixel_metrics(masks, maps)["auroc"]
    assert abs(aurocs["fp32"] - aurocs["bf16"]) <= 0.002


def test_streamed_class_metrics_do_not_depend_on_batch_boundaries(tmp_path, clip_file, target_data):
    reference_checkpoint(tmp_path / "p.pth")
    results = []
    for batch in ("3", "5", "16"):  # boundaries inside classes, straddling them, one batch for all
        argv = ["--data_path", str(target_data), "--save_path", str(tmp_path / batch), "--checkpoint_path",
                str(tmp_path / "p.pth"), "--pretrained", str(clip_file), *SMALL, "--batch_size", batch]
        cli.test_main(argv)
        results.append(json.loads((tmp_path / batch / "results.json").read_text())["classes"])
    for other in results[1:]:
        for cls, metrics in results[0].items():
            assert other[cls] == pytest.approx(metrics, abs=1e-6), cls
