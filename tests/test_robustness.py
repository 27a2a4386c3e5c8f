"""Bad input ends as one line on stderr with exit status 2; odd but valid images work; nothing is lost."""
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, SMALL, train_small
from dhrclip import cli
from dhrclip.engine import training
from dhrclip.detector.checkpoint import read_checkpoint, save_checkpoint
from dhrclip.data.canvases import CanvasDataset, read_meta
from dhrclip.data.images import load_mask, load_rgb
from dhrclip.data.indexing import mvtec_layout_index, write_meta
from dhrclip.data.synthetic import write_mvtec_dataset


@pytest.fixture
def data(tmp_path):
    root = write_mvtec_dataset(tmp_path / "data", ["stripes"], n_good=2, n_defect=2, n_train=0, size=(48, 64), seed=4)
    write_meta(root, mvtec_layout_index(root))
    return root


@pytest.fixture
def ckpt(tmp_path, clip_file, data):
    train_small(data, tmp_path / "ckpt", clip_file)
    return tmp_path / "ckpt" / "epoch_1.pth"


def first_test_item(data):
    meta = json.loads((data / "meta.json").read_text())
    return meta, next(r for r in meta["test"]["stripes"] if r["anomaly"])


def edit_meta(data, change):
    meta = json.loads((data / "meta.json").read_text())
    change(meta)
    (data / "meta.json").write_text(json.dumps(meta))


class Payload:
    target = ""

    def __reduce__(self):
        return (Path.touch, (Path(Payload.target),))


def case_root_missing(data, ckpt, clip):
    return ["--data_path", str(data / "nope")], "dataset root not found"


def case_meta_missing(data, ckpt, clip):
    (data / "meta.json").unlink()
    return [], "meta.json not found"


def case_meta_not_json(data, ckpt, clip):
    (data / "meta.json").write_text("{not json")
    return [], "not valid JSON"


def case_meta_bad_item(data, ckpt, clip):
    edit_meta(data, lambda m: m["test"]["stripes"][1].pop("anomaly"))
    return [], r"test/stripes\[1\]"


def case_class_empty(data, ckpt, clip):
    edit_meta(data, lambda m: m["test"].update(empty=[]))
    return [], "class 'empty' of 'test' has no items"


def case_image_missing(data, ckpt, clip):
    _, item = first_test_item(data)
    (data / item["img_path"]).unlink()
    return [], f"image not found: .*{item['img_path']}"


def case_image_truncated(data, ckpt, clip):
    _, item = first_test_item(data)
    path = data / item["img_path"]
    path.write_bytes(path.read_bytes()[:200])
    return [], f"{item['img_path']} is unreadable or truncated"


def case_mask_size(data, ckpt, clip):
    _, item = first_test_item(data)
    Image.new("L", (10, 10)).save(data / item["mask_path"])
    return [], "mask .* is 10x10 but its image"


def case_layers(data, ckpt, clip):
    return ["--features_list", "2", "9"], r"--features_list \[9\] is outside the model's layers 1..4"


def case_dpam(data, ckpt, clip):
    return ["--dpam", "7"], "--dpam 7 must be between 1 and the model's depth 4"


def case_tile_too_large(data, ckpt, clip):
    return ["--patch_image_size", "126"], "larger than the canvas"


def case_tile_gaps(data, ckpt, clip):
    return ["--patch_image_size", "42"], "leave gaps"


def case_checkpoint_missing(data, ckpt, clip):
    return ["--checkpoint_path", str(ckpt.parent / "epoch_99.pth")], "checkpoint not found"


def case_checkpoint_config(data, ckpt, clip):
    return ["--depth", "4"], r"--depth=4 does not fit the checkpoint: its prompts were trained with 3"


def case_checkpoint_pickle(data, ckpt, clip):
    Payload.target = str(data / "pwned")
    torch.save({"prompt_learner": {"ctx_pos": Payload()}}, ckpt)
    return [], "refused to load"


def case_weights_missing(data, ckpt, clip):
    return ["--pretrained", str(data / "ViT-L-14-336px.pt")], "weights file not found"


def case_weights_corrupt(data, ckpt, clip):
    bad = data / "w.pt"
    bad.write_bytes(b"PK\x03\x04 corrupt" * 50)
    return ["--pretrained", str(bad)], "corrupt"


def case_weights_not_clip(data, ckpt, clip):
    torch.save({"fc.weight": torch.zeros(2, 2)}, data / "w.pt")
    return ["--pretrained", str(data / "w.pt")], "not a CLIP ViT checkpoint"


def case_weights_pickle(data, ckpt, clip):
    Payload.target = str(data / "pwned")
    torch.save({"visual.proj": Payload()}, data / "w.pt")
    return ["--pretrained", str(data / "w.pt")], "refused to load"


def case_cuda_missing(data, ckpt, clip):
    return ["--device", "cuda"], "asked for CUDA"


TEST_CASES = [case_root_missing, case_meta_missing, case_meta_not_json, case_meta_bad_item, case_class_empty,
              case_image_missing, case_image_truncated, case_mask_size, case_layers, case_dpam,
              case_tile_too_large, case_tile_gaps, case_checkpoint_missing, case_checkpoint_config,
              case_checkpoint_pickle, case_weights_missing, case_weights_corrupt, case_weights_not_clip,
              case_weights_pickle, case_cuda_missing]


def expect_user_error(capsys, main, argv, pattern, parser=None):
    """``main``: a command's entry (cli.test_main, ...), or a function run under ``parser``."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv) if parser is None else cli.run(main, parser, argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert re.search(pattern, err), err


@pytest.mark.parametrize("case", TEST_CASES, ids=lambda c: c.__name__[5:])
def test_test_py_user_errors(case, capsys, monkeypatch, data, ckpt, clip_file):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CUDA case means "no CUDA here"
    extra, pattern = case(data, ckpt, clip_file)
    argv = ["--data_path", str(data), "--save_path", str(data.parent / "out"), "--checkpoint_path", str(ckpt),
            "--pretrained", str(clip_file), *SMALL, *extra]
    expect_user_error(capsys, cli.test_main, argv, pattern)
    assert not (data / "pwned").exists()
    assert not (data.parent / "out" / "results.json").exists()


def test_cuda_out_of_memory_suggests_a_smaller_batch(capsys, monkeypatch):
    def oom(args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    expect_user_error(capsys, oom, ["--batch_size", "64"], "smaller --batch_size", parser=cli.evaluation_parser())


def test_training_without_masks_and_predict_without_input(capsys, tmp_path, data, ckpt, clip_file):
    edit_meta(data, lambda m: [r.update(mask_path="") for r in m["test"]["stripes"]])
    expect_user_error(capsys, cli.train_main, ["--train_data_path", str(data), "--save_path", str(tmp_path / "c"),
                                               "--pretrained", str(clip_file), *SMALL], "training needs a mask")
    expect_user_error(capsys, cli.predict_main, ["--checkpoint_path", str(ckpt), "--input", str(tmp_path / "missing"),
                                                 *SMALL], "--input .*missing: no such file or folder")


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_the_last_checkpoint(capsys, monkeypatch, tmp_path, data,
                                                                            clip_file):
    real = training.segmentation_loss
    calls = {"n": 0}

    def poisoned(maps, masks):
        calls["n"] += 1
        loss = real(maps, masks)
        return loss * float("nan") if calls["n"] > 1 else loss  # 1 step per epoch here
    monkeypatch.setattr(training, "segmentation_loss", poisoned)
    argv = ["--train_data_path", str(data), "--save_path", str(tmp_path / "c"), "--pretrained", str(clip_file),
            "--epoch", "3", *SMALL]
    expect_user_error(capsys, cli.train_main, argv, "loss became nan at epoch 2, step 1")
    assert read_checkpoint(tmp_path / "c").state["epoch"] == 1


def test_interrupted_results_write_leaves_the_previous_file(monkeypatch, tmp_path):
    from dhrclip import files
    target = tmp_path / "results.json"
    files.save_json(target, {"run": 1})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(files.json, "dumps", crash)
    with pytest.raises(KeyboardInterrupt):
        files.save_json(target, {"run": 2})
    assert json.loads(target.read_text()) == {"run": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


KILL_DURING_SAVE = """
import os, signal, torch
from dhrclip.detector import checkpoint
def half_then_die(state, handle):
    handle.write(b"PK partial checkpoint bytes")
    handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)
checkpoint.torch.save = half_then_die
checkpoint.save_checkpoint({path!r}, {{"epoch": 2}})
"""


def test_kill_during_checkpoint_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "epoch_1.pth"
    save_checkpoint(path, {"epoch": 1, "prompt_learner": {"ctx_pos": torch.zeros(1), "ctx_neg": torch.zeros(1)}})
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE.format(path=str(path))])
    assert proc.returncode == -signal.SIGKILL
    assert read_checkpoint(path).state["epoch"] == 1


def test_entry_script_reports_a_worker_error_as_one_line(tmp_path, data, ckpt, clip_file):
    _, item = first_test_item(data)
    path = data / item["img_path"]
    path.write_bytes(path.read_bytes()[:100])
    proc = subprocess.run([sys.executable, "test.py", "--data_path", str(data), "--save_path", str(tmp_path / "o"),
                           "--checkpoint_path", str(ckpt), "--pretrained", str(clip_file), *SMALL,
                           "--num_workers", "2"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and item["img_path"] in last and "truncated" in last


def test_debug_shows_the_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "generate_dataset_json/mvtec.py", "--root", str(tmp_path / "x"),
                           "--debug"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "dataset root not found" in proc.stderr


def odd_variants(tmp_path):
    """Valid images in awkward encodings, each with the (height, width) a viewer would show."""
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8))
    out = {}
    def add(name, img, shape, **kw):
        img.save(tmp_path / name, **kw)
        out[name] = shape
    add("gray.png", rgb.convert("L"), (30, 50))
    add("rgba.png", rgb.convert("RGBA"), (30, 50))
    add("la.png", rgb.convert("LA"), (30, 50))
    add("palette.png", rgb.convert("P"), (30, 50))
    add("palette_transparent.png", rgb.convert("P"), (30, 50), transparency=0)
    add("sixteen.png", Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 257)), (30, 50))
    add("cmyk.jpg", rgb.convert("CMYK"), (30, 50), quality=95)
    add("float.tif", Image.fromarray(np.asarray(rgb.convert("L"), np.float32)), (30, 50))
    add("unit_float.tif", Image.fromarray(np.asarray(rgb.convert("L"), np.float32) / 255), (30, 50))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: shown as 50 high, 30 wide
    add("exif_rotated.jpg", rgb, (50, 30), exif=exif)
    add("tiny.png", rgb.resize((5, 3)), (3, 5))
    add("large.png", rgb.resize((4000, 3000)), (3000, 4000))
    return out


def test_odd_images_load_as_rgb_of_the_shown_shape(tmp_path):
    for name, shape in odd_variants(tmp_path).items():
        img = load_rgb(tmp_path / name)
        assert img.mode == "RGB" and (img.height, img.width) == shape, name
    gray = np.asarray(load_rgb(tmp_path / "gray.png"))
    for name in ("sixteen.png", "float.tif", "unit_float.tif"):  # same picture at another bit depth
        assert np.abs(np.asarray(load_rgb(tmp_path / name)).astype(int) - gray).max() <= 1, name


def test_odd_images_give_the_same_map_shape_as_a_plain_rgb_copy(tmp_path, clip_file):
    odd, plain = tmp_path / "odd", tmp_path / "plain"
    odd.mkdir()
    plain.mkdir()
    shapes = odd_variants(odd)
    for name in shapes:
        load_rgb(odd / name).save(plain / f"{Path(name).stem}_plain.png")
    torch.save({"prompt_learner": _fresh_prompts()}, tmp_path / "epoch_1.pth")
    common = ["--checkpoint_path", str(tmp_path / "epoch_1.pth"), "--pretrained", str(clip_file), *SMALL]
    cli.predict_main([*common, "--input", str(odd), "--save_path", str(tmp_path / "a")])
    cli.predict_main([*common, "--input", str(plain), "--save_path", str(tmp_path / "b")])
    for name, shape in shapes.items():
        from_odd = np.load(tmp_path / "a" / "maps" / f"{name.replace('.', '_')}.npy")
        from_plain = np.load(tmp_path / "b" / "maps" / f"{Path(name).stem}_plain_png.npy")
        assert from_odd.shape == from_plain.shape == shape, name


def _fresh_prompts():
    g = torch.Generator().manual_seed(0)
    state = {"ctx_pos": torch.randn(1, 1, 6, 64, generator=g), "ctx_neg": torch.randn(1, 1, 6, 64, generator=g)}
    state.update({f"compound_prompts_text.{i}": torch.randn(2, 64, generator=g) for i in range(2)})
    return state


def test_masks_in_any_mode_mark_non_zero_pixels(tmp_path):
    base = np.zeros((6, 8), np.uint8)
    base[1:3, 2:5] = 1
    variants = {
        "l.png": Image.fromarray(base * 255),
        "one.png": Image.fromarray(base),
        "rgb.png": Image.fromarray(np.stack([base * 0, base * 200, base * 0], -1)),
        "rgba.png": Image.fromarray(np.stack([base * 255] * 3 + [np.full_like(base, 255)], -1)),
        "sixteen.png": Image.fromarray(base.astype(np.uint16) * 65535),
        "bilevel.png": Image.fromarray(base.astype(bool)),
        "palette.png": Image.fromarray(base * 255).convert("P"),
    }
    for name, img in variants.items():
        img.save(tmp_path / name)
        assert np.array_equal(load_mask(tmp_path / name), base.astype(bool)), name


def test_normal_images_get_an_all_zero_mask_of_their_own_shape(data):
    items = read_meta(data, "test")["stripes"]
    normal = next(i for i in items if not i.anomaly)
    sample = CanvasDataset([normal], 112)[0]
    assert sample["mask"].shape == (112, 112) and not sample["mask"].any()
    assert tuple(sample["size"].tolist()) == (48, 64)
