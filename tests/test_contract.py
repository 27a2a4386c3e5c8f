"""A checkpoint is a contract: its settings come back in test, predict and the Python API."""
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, RUNTIME, small_config, train_small
from dhrclip import DHRCLIP, PredictConfig, cli, predict
from dhrclip.detector.checkpoint import read_checkpoint, save_checkpoint
from dhrclip.config import ModelConfig, check_resumable, resolve_model_config
from dhrclip.errors import UserError
from dhrclip.data.synthetic import save_openai_format, synthetic_image, tiny_clip

# Nothing here is a default: taps, V-V depth, geometry, prompt shapes and smoothing all differ.
ODD_FLAGS = ["--features_list", "1", "3", "--dpam", "2", "--image_size", "42", "--patch_image_size", "56",
             "--target_image_size", "98", "--tiles_per_side", "2", "--depth", "2", "--n_ctx", "5",
             "--t_n_ctx", "1", "--sigma", "2"]


@pytest.fixture(scope="module")
def odd_checkpoint(tmp_path_factory, clip_file, source_data):
    out = tmp_path_factory.mktemp("odd")
    cli.train_main(["--train_data_path", str(source_data), "--save_path", str(out), "--pretrained", str(clip_file),
                    "--epoch", "1", *ODD_FLAGS, *RUNTIME])
    return out / "epoch_1.pth"


def metrics_of(path):
    return json.loads((Path(path) / "results.json").read_text())["classes"]


def test_checkpoint_records_a_versioned_model_config(odd_checkpoint, clip_file):
    saved = torch.load(odd_checkpoint, weights_only=True)["config"]
    assert saved["version"] == 1 and saved["features_list"] == [1, 3] and saved["dpam"] == 2
    assert saved["pretrained"] == str(clip_file) and saved["quick_gelu"] is True
    assert saved["weights_fingerprint"].startswith(f"size:{clip_file.stat().st_size}:")
    assert ModelConfig.from_dict(saved).to_dict() == saved


def test_test_py_without_model_flags_equals_every_flag_restated(tmp_path, odd_checkpoint, clip_file, target_data):
    common = ["--data_path", str(target_data), "--checkpoint_path", str(odd_checkpoint), *RUNTIME]
    cli.test_main([*common, "--save_path", str(tmp_path / "bare")])
    cli.test_main([*common, "--save_path", str(tmp_path / "full"), "--pretrained", str(clip_file), *ODD_FLAGS])
    assert metrics_of(tmp_path / "bare") == metrics_of(tmp_path / "full")
    saved = json.loads((tmp_path / "bare" / "results.json").read_text())
    assert saved["config"]["features_list"] == [1, 3] and saved["config"]["sigma"] == 2
    cli.test_main([*common, "--save_path", str(tmp_path / "other"), "--features_list", "3"])
    assert metrics_of(tmp_path / "other") != metrics_of(tmp_path / "bare")  # the flags are not ignored


def test_predict_py_with_three_flags_gives_the_api_maps(tmp_path, odd_checkpoint, clip_file):
    rng = np.random.default_rng(5)
    (tmp_path / "in").mkdir()
    images = {"a.png": synthetic_image("grain", 50, 70, rng), "b.png": synthetic_image("stripes", 64, 40, rng)}
    for name, img in images.items():
        Image.fromarray(img).save(tmp_path / "in" / name)
    cli.predict_main(["--checkpoint_path", str(odd_checkpoint), "--pretrained", str(clip_file),
                      "--input", str(tmp_path / "in"), "--save_path", str(tmp_path / "out"), "--device", "cpu"])
    rows = {Path(r["path"]).name: r for r in
            json.loads((tmp_path / "out" / "predictions.json").read_text())["predictions"]}

    model = DHRCLIP.from_checkpoint(odd_checkpoint, pretrained=str(clip_file), device="cpu")
    from_paths = model.predict([tmp_path / "in" / name for name in images])
    from_arrays = model.predict(list(images.values()))
    for (name, img), by_path, by_array in zip(images.items(), from_paths, from_arrays):
        saved = np.load(tmp_path / "out" / "maps" / f"{name.replace('.', '_')}.npy")
        assert by_path.anomaly_map.shape == img.shape[:2] and by_path.anomaly_map.dtype == np.float32
        assert np.array_equal(saved, by_path.anomaly_map.astype(np.float16))
        assert rows[name]["image_score"] == by_path.score and rows[name]["map_max"] == by_path.map_max
        assert np.allclose(by_array.anomaly_map, by_path.anomaly_map, atol=1e-6)  # an array is the same picture
    single = model.predict(Image.fromarray(images["a.png"]))
    assert np.allclose(single.anomaly_map, from_paths[0].anomaly_map, atol=1e-5)


def test_print_config_names_each_source(capsys):
    cli.train_main(["--train_data_path", "x", "--print_config", "--dpam", "7"])  # prints, trains nothing
    lines = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert lines["dpam"] == ["7", "argument"] and lines["depth"] == ["9", "default"]
    assert lines["quick_gelu"] == ["None", "backbone"]


def test_print_config_of_a_checkpoint(capsys, odd_checkpoint, tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    cli.predict_main(["--checkpoint_path", str(odd_checkpoint), "--input", str(tmp_path / "x.png"),
                      "--print_config", "--sigma", "4"])
    lines = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert lines["sigma"] == ["4.0", "argument"] and lines["dpam"] == ["2", "checkpoint"]
    assert lines["features_list"] == ["1", "3", "checkpoint"]
    assert not (tmp_path / "predictions").exists()
    cli.test_main(["--checkpoint_path", str(odd_checkpoint), "--print_config", "--model", "ViT-B-16"])  # no data
    lines = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert lines["model"] == ["ViT-B-16", "argument"] and lines["quick_gelu"] == ["None", "backbone"]


def test_test_time_geometry_may_differ_and_is_logged(caplog, odd_checkpoint):
    with caplog.at_level(logging.INFO):
        model = DHRCLIP.from_checkpoint(odd_checkpoint, device="cpu", target_image_size=112, patch_image_size=70,
                                        sigma=0)
    assert model.config.target_image_size == 112 and model.config.sigma == 0
    assert model.resolved.sources["target_image_size"] == "argument"
    assert model.resolved.sources["image_size"] == "checkpoint"
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("target_image_size=112 at test time (trained with 98)" in m for m in info)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_taps_may_differ_with_a_warning_naming_both_values(caplog, odd_checkpoint):
    with caplog.at_level(logging.WARNING):
        model = DHRCLIP.from_checkpoint(odd_checkpoint, device="cpu", features_list=[2, 3], dpam=3)
    assert model.config.features_list == (2, 3) and model.config.dpam == 3
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "features_list=[2, 3] differs from training (features_list=[1, 3])" in warnings
    assert "dpam=3 differs from training (dpam=2)" in warnings


@pytest.mark.parametrize("field,value", [("n_ctx", 6), ("depth", 3), ("t_n_ctx", 2)])
def test_prompt_shapes_may_not_differ(odd_checkpoint, field, value):
    with pytest.raises(UserError, match=f"{field}={value} does not fit the checkpoint") as error:
        DHRCLIP.from_checkpoint(odd_checkpoint, device="cpu", **{field: value})
    assert error.value.field == field


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


def test_resuming_with_other_settings_is_refused(tmp_path, clip_file, source_data):
    train_small(source_data, tmp_path / "run", clip_file, epochs=1)
    with pytest.raises(SystemExit):
        cli.train_main(["--train_data_path", str(source_data), "--save_path", str(tmp_path / "run"),
                        "--resume", str(tmp_path / "run"), "--epoch", "2", "--dpam", "2", *RUNTIME])
    cli.train_main(["--train_data_path", str(source_data), "--save_path", str(tmp_path / "run"),
                    "--resume", str(tmp_path / "run"), "--epoch", "2", *RUNTIME])  # no flags: the checkpoint's
    assert read_checkpoint(tmp_path / "run").state["epoch"] == 2
    saved = small_config(clip_file)
    with pytest.raises(UserError, match="dpam=4 differs from the checkpoint being resumed") as error:
        check_resumable(resolve_model_config({"dpam": 4}, saved=saved, resume=True).config, saved)
    assert error.value.field == "dpam"


def test_text_features_stay_fp32_when_the_vision_tower_runs_in_bf16(clip_file):
    torch.manual_seed(0)
    half = DHRCLIP.create(small_config(clip_file), device="cpu", precision="bf16").model
    full = DHRCLIP.create(small_config(clip_file), device="cpu", precision="fp32").model
    full.prompt_learner.load_state_dict(half.prompt_learner.state_dict())
    text = half.text_features()
    assert text.dtype == torch.float32 and torch.equal(text, full.text_features())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # even inside a caller's autocast
        assert torch.equal(half.text_features(), text)
    feats = half.encode_views(torch.randint(0, 256, (1, 3, 112, 112), dtype=torch.uint8))
    assert feats.global_tokens[0].dtype == torch.bfloat16  # the vision tower does run in bf16
    assert all(m.dtype == torch.float32 for m in half.layer_maps(feats, text))


def test_threshold_file_is_refused_for_other_settings_or_checkpoints(tmp_path, checkpoint, clip_file, source_data):
    rng = np.random.default_rng(2)
    (tmp_path / "good").mkdir()
    for i in range(3):
        Image.fromarray(synthetic_image("grain", 40, 40, rng)).save(tmp_path / "good" / f"{i}.png")
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    common = dict(input=str(tmp_path / "good"), batch_size=4, num_workers=0)
    predict(model, PredictConfig(**common, save_path=tmp_path / "cal", calibrate_on=str(tmp_path / "good")))
    threshold = tmp_path / "cal" / "threshold.json"
    assert json.loads(threshold.read_text())["config"]["sigma"] == 8
    predict(model, PredictConfig(**common, save_path=tmp_path / "same", threshold_file=threshold))
    smoother = DHRCLIP.from_checkpoint(checkpoint, device="cpu", sigma=0)
    with pytest.raises(UserError, match="this run uses sigma=0, but .* was calibrated with 8.0") as error:
        predict(smoother, PredictConfig(**common, save_path=tmp_path / "x", threshold_file=threshold))
    assert error.value.field == "sigma"
    train_small(source_data, tmp_path / "other", clip_file, epochs=2)
    other = DHRCLIP.from_checkpoint(tmp_path / "other", device="cpu")
    with pytest.raises(UserError, match="calibrated for the checkpoint"):
        predict(other, PredictConfig(**common, save_path=tmp_path / "y", threshold_file=threshold))


def test_cli_shows_fields_as_flags():
    error = UserError("features_list [9] is outside the model's layers 1..4", field="features_list")
    assert cli.one_line(error) == "--features_list [9] is outside the model's layers 1..4"
    error = UserError("weights file not found: /x/model/pretrained.pt (give pretrained as a file)", field="pretrained")
    assert cli.one_line(error) == "weights file not found: /x/model/pretrained.pt (give --pretrained as a file)"
    assert cli.one_line(UserError("epochs must be at least 1, got 0", field="epochs"), {"epoch"}) == \
        "--epoch must be at least 1, got 0"


def test_readme_api_example_runs(tmp_path, monkeypatch, checkpoint, target_data):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "runs" / "trained_on_mvtec").mkdir(parents=True)
    shutil.copy(checkpoint / "epoch_1.pth", tmp_path / "runs" / "trained_on_mvtec" / "epoch_15.pth")
    (tmp_path / "my_parts").mkdir()
    part = synthetic_image("disk", 60, 80, np.random.default_rng(0))
    Image.fromarray(part).save(tmp_path / "my_parts" / "part_001.png")
    shutil.copytree(target_data, tmp_path / "data" / "visa")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "results" / "visa" / "results.json").is_file()


def test_installed_commands_and_help_without_torch(tmp_path):
    bin_dir = Path(sys.executable).parent
    proc = subprocess.run([str(bin_dir / "dhrclip-test"), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and "(default: results)" in proc.stdout and "--print_config" in proc.stdout
    for script in ("train.py", "test.py", "predict.py", "demo.py"):
        proc = subprocess.run([sys.executable, "-X", "importtime", script, "--help"], capture_output=True, text=True,
                              cwd=ROOT)
        assert proc.returncode == 0 and "usage:" in proc.stdout, script
        assert not re.search(r"\|\s+torch$", proc.stderr, re.M), f"{script} --help imports torch"


def test_pip_install_gives_a_package_that_imports_from_anywhere(tmp_path):
    """A plain (non-editable) install of the project: the package, its version, its entry points."""
    source, target = tmp_path / "source", tmp_path / "site"  # a copy, so the build leaves the checkout alone
    shutil.copytree(ROOT / "dhrclip", source / "dhrclip", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True)
    assert (target / "dhrclip" / "detector" / "facade.py").is_file() and not (target / "dhrclip" / "tests").exists()
    code = "import dhrclip, sys; print(dhrclip.__version__, dhrclip.__file__, 'torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {code}"],
                          capture_output=True, text=True, cwd=tmp_path)
    version, where, torch_loaded = proc.stdout.split()
    assert version == "0.2.0" and where.startswith(str(target)) and torch_loaded == "False"
    entry_points = next(target.glob("dhrclip-*.dist-info")) / "entry_points.txt"
    assert "dhrclip-predict = dhrclip.cli:predict_main" in entry_points.read_text()


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


def test_resuming_without_a_model_uses_the_checkpoint_settings(tmp_path, clip_file, source_data):
    train_small(source_data, tmp_path / "run", clip_file, model=small_config(clip_file, sigma=3.0))
    from dhrclip import TrainConfig, train
    train(TrainConfig(data_path=source_data, save_path=tmp_path / "run", epochs=2, resume=tmp_path / "run",
                      batch_size=4, num_workers=0, device="cpu"))
    assert read_checkpoint(tmp_path / "run").config.sigma == 3.0


def test_quick_gelu_tags_other_than_openai_are_refused_in_gelu_architectures(tmp_path, monkeypatch):
    import open_clip
    from dhrclip.core import backbone
    plain = tmp_path / "b32.pt"
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), plain)
    monkeypatch.setattr(backbone, "_download", lambda model, tag: plain)
    with pytest.raises(UserError, match="trained with QuickGELU .* use model ViT-B-32-quickgelu"):
        backbone.load_clip("ViT-B-32", "laion400m_e32")


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
