"""DHRCLIP, the detector users hold: rebuilt from checkpoints with their settings and backbone,
predicting, and taking a few-shot bank."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RUNTIME, small_config, train_small
from PIL import Image

from dhrclip import DHRCLIP, cli
from dhrclip.data.synthetic import save_openai_format, synthetic_image, tiny_clip
from dhrclip.detector.checkpoint import read_checkpoint, save_checkpoint
from dhrclip.errors import UserError


def test_a_backbone_of_another_width_is_refused(tmp_path, odd_checkpoint):
    narrow = save_openai_format(tiny_clip(seed=1, vision_width=32, text_width=32, embed_dim=16),
                                tmp_path / "narrow.pt")
    with pytest.raises(UserError, match="text width 64, but model has width 32") as error:
        DHRCLIP.from_checkpoint(odd_checkpoint, pretrained=str(narrow), device="cpu")
    assert error.value.field == "model"


def test_a_backbone_with_another_activation_is_refused(tmp_path, odd_checkpoint):
    state = torch.load(odd_checkpoint, weights_only=True)
    state["config"]["quick_gelu"] = False  # as if trained on a GELU architecture
    save_checkpoint(tmp_path / "gelu.pth", state)
    with pytest.raises(UserError, match="trained on a GELU backbone") as error:
        DHRCLIP.from_checkpoint(tmp_path / "gelu.pth", device="cpu")
    assert error.value.field == "model"


def test_weights_default_to_the_recorded_file_and_other_weights_are_warned_about(tmp_path, caplog, clip_file,
                                                                                 source_data):
    weights = shutil.copy(clip_file, tmp_path / "w.pt")
    train_small(source_data, tmp_path / "ckpt", Path(weights), model=small_config(Path(weights)))
    assert DHRCLIP.from_checkpoint(tmp_path / "ckpt", device="cpu").config.pretrained == str(weights)
    other = save_openai_format(tiny_clip(seed=9), tmp_path / "other.pt")
    with caplog.at_level(logging.WARNING):
        DHRCLIP.from_checkpoint(tmp_path / "ckpt", pretrained=str(other), device="cpu")
    assert "is not the file the prompts were trained with" in caplog.text
    Path(weights).unlink()
    with pytest.raises(UserError, match="trained with the weights file .*w.pt, which is not there") as error:
        DHRCLIP.from_checkpoint(tmp_path / "ckpt", device="cpu")
    assert error.value.field == "pretrained"


def test_reference_checkpoints_get_the_run_script_settings_and_layer_24(tmp_path, caplog):
    g = torch.Generator().manual_seed(0)
    prompts = {"ctx_pos": torch.randn(1, 1, 12, 768, generator=g), "ctx_neg": torch.randn(1, 1, 12, 768, generator=g)}
    prompts.update({f"compound_prompts_text.{i}": torch.randn(4, 768, generator=g) for i in range(8)})
    prompts.update({f"compound_prompt_projections.{i}.weight": torch.zeros(896, 768) for i in range(8)})
    torch.save({"prompt_learner": prompts}, tmp_path / "reference.pth")
    with caplog.at_level(logging.INFO):
        resolved = DHRCLIP.resolve_config(tmp_path / "reference.pth")
    assert resolved.config.features_list == (24,) and resolved.sources["features_list"] == "reference default"
    assert (resolved.config.image_size, resolved.config.patch_image_size, resolved.config.target_image_size) == \
        (336, 224, 448)
    assert (resolved.config.depth, resolved.config.n_ctx, resolved.config.t_n_ctx) == (9, 12, 4)
    assert resolved.config.model == "ViT-L-14-336-quickgelu" and resolved.config.pretrained == "openai"
    assert sum("features_list [24]" in r.getMessage() for r in caplog.records) == 1
    assert DHRCLIP.resolve_config(tmp_path / "reference.pth", features_list=[6, 12, 18, 24]).config.features_list \
        == (6, 12, 18, 24)


def test_an_earlier_release_checkpoint_brings_back_its_saved_flags(tmp_path, odd_checkpoint):
    state = torch.load(odd_checkpoint, weights_only=True)
    flags = {k: v for k, v in state["config"].items() if k not in ("version", "quick_gelu", "weights_fingerprint")}
    state["config"] = {**flags, "train_data_path": "data/x", "epoch": 1, "debug": False}  # what train.py used to save
    save_checkpoint(tmp_path / "old.pth", state)
    assert DHRCLIP.resolve_config(tmp_path / "old.pth").config.features_list == (1, 3)


def test_model_override_warns_and_a_recorded_tag_is_the_default(tmp_path, caplog, odd_checkpoint):
    state = torch.load(odd_checkpoint, weights_only=True)
    state["config"]["pretrained"] = "openai"  # as if trained on the tag
    save_checkpoint(tmp_path / "tag.pth", state)
    resolved = DHRCLIP.resolve_config(tmp_path / "tag.pth")
    assert resolved.config.pretrained == "openai" and resolved.sources["pretrained"] == "checkpoint"
    with caplog.at_level(logging.WARNING):
        resolved = DHRCLIP.resolve_config(tmp_path / "tag.pth", model="ViT-B-16-quickgelu")
    assert "model=ViT-B-16-quickgelu differs from training (model=ViT-L-14-336-quickgelu)" in caplog.text
    assert resolved.config.quick_gelu is None and resolved.sources["quick_gelu"] == "backbone"


def test_weights_are_recorded_by_absolute_path_and_resume_survives_a_move(tmp_path, monkeypatch, clip_file,
                                                                         source_data, caplog):
    (tmp_path / "w").mkdir()
    shutil.copy(clip_file, tmp_path / "w" / "tiny.pt")
    monkeypatch.chdir(tmp_path)
    train_small(source_data, tmp_path / "run", clip_file, model=small_config(Path("w/tiny.pt")))
    assert read_checkpoint(tmp_path / "run").config.pretrained == str(tmp_path.resolve() / "w" / "tiny.pt")
    moved = shutil.move(tmp_path / "w" / "tiny.pt", tmp_path / "moved.pt")
    # Library: resuming without a model takes the checkpoint's settings; a moved weights file is accepted.
    history = train_small(source_data, tmp_path / "run", clip_file, epochs=2, resume=tmp_path / "run",
                          model=small_config(Path(moved)))
    assert [h["epoch"] for h in history] == [2]
    cli.train_main(["--train_data_path", str(source_data), "--save_path", str(tmp_path / "run"), "--resume",
                    str(tmp_path / "run"), "--epoch", "3", "--pretrained", str(moved), *RUNTIME])
    assert read_checkpoint(tmp_path / "run").state["epoch"] == 3
    other = save_openai_format(tiny_clip(seed=3), tmp_path / "other.pt")
    with caplog.at_level(logging.WARNING):
        train_small(source_data, tmp_path / "run", clip_file, epochs=4, resume=tmp_path / "run",
                    model=small_config(other))
    assert "not the file the prompts were trained with" in caplog.text


def test_bad_precision_is_refused_before_the_backbone_loads(odd_checkpoint, monkeypatch):
    from dhrclip.detector import facade as detector
    monkeypatch.setattr(detector, "load_clip", lambda *a: pytest.fail("loaded the backbone"))
    with pytest.raises(UserError, match="precision 'float16' is not one of fp32, fp16, bf16") as error:
        DHRCLIP.from_checkpoint(odd_checkpoint, device="cpu", precision="float16")
    assert error.value.field == "precision"


def test_predict_api_refuses_folders_and_turns_pil_images_upright(tmp_path, checkpoint):
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    with pytest.raises(UserError, match="is a folder"):
        model.predict(tmp_path)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 30x50, shown 50 high and 30 wide
    Image.fromarray(synthetic_image("grain", 30, 50, np.random.default_rng(0))).save(tmp_path / "r.jpg", exif=exif)
    by_path, by_pil = model.predict([tmp_path / "r.jpg", Image.open(tmp_path / "r.jpg")])
    assert by_path.anomaly_map.shape == by_pil.anomaly_map.shape == (50, 30)
    assert np.allclose(by_path.anomaly_map, by_pil.anomaly_map, atol=1e-6)


def test_after_training_the_detector_knows_its_checkpoint(tmp_path, clip_file, source_data):
    model = DHRCLIP.create(small_config(clip_file), device="cpu")
    train_small(source_data, tmp_path / "run", clip_file, epochs=2, model=model)
    assert model.checkpoint == tmp_path / "run" / "epoch_2.pth"


def test_a_saved_bank_reloads_and_is_refused_for_other_settings(checkpoint, goods, tmp_path):
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    few = model.with_reference(goods, grid="auto")
    few.reference.save(tmp_path / "bank.safetensors")
    again = model.with_reference(tmp_path / "bank.safetensors", grid="auto")
    for a, b in zip(few.reference.tile_tokens, again.reference.tile_tokens):
        assert torch.equal(a, b)
    assert again.reference.sources == [str(p.resolve()) for p in goods]
    assert np.allclose(few.predict(goods[0]).anomaly_map, again.predict(goods[0]).anomaly_map)
    other = DHRCLIP.from_checkpoint(checkpoint, device="cpu", target_image_size=140)
    with pytest.raises(UserError, match="target_image_size") as info:
        other.with_reference(tmp_path / "bank.safetensors", grid="fixed")
    assert info.value.field == "target_image_size"
    with pytest.raises(UserError, match="grid") as info:
        model.with_reference(tmp_path / "bank.safetensors", grid="fixed")
    (tmp_path / "fake.safetensors").write_bytes(b"not a bank")
    with pytest.raises(UserError, match="not a reference bank"):
        model.with_reference(tmp_path / "fake.safetensors")


def test_the_few_shot_term_weighs_the_same_against_the_zero_shot_map_with_one_tap_or_four(clip_file, goods):
    """Both maps are sums over the tapped layers and the few-shot distances count in the bank's
    units, so the few-shot share of the map does not depend on the number of taps. With the rule
    it replaced (a mean of raw distances over taps) the share fell about fourfold from one tap to
    four; the stated tolerance is a factor of 1.5."""
    share = {}
    for taps in ((4,), (1, 2, 3, 4)):
        model = DHRCLIP.create(small_config(clip_file, features_list=taps), device="cpu")
        zero = model.predict(goods[3]).anomaly_map
        few = model.with_reference(goods[:3], grid="auto").predict(goods[3]).anomaly_map - zero
        assert 0.25 < few.mean() / len(taps) < 1.0  # a good part: about half a unit per layer
        share[taps] = few.mean() / zero.mean()
    assert 1 / 1.5 < share[(4,)] / share[(1, 2, 3, 4)] < 1.5
