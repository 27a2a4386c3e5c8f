"""Shared fixtures and helpers: a tiny OpenAI-format CLIP file, small synthetic datasets and checkpoints, small
settings, and the runners several test modules use."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from dhrclip import cli
from dhrclip.config import ModelConfig, RunOptions, TrainConfig
from dhrclip.data.canvases import CanvasDataset, Masks
from dhrclip.data.indexing import mvtec_layout_index, write_meta
from dhrclip.data.synthetic import paint_defect, save_openai_format, synthetic_image, tiny_clip, write_mvtec_dataset
from dhrclip.detector.inference import iter_batches
from dhrclip.engine.training import train

ROOT = Path(__file__).resolve().parent.parent

torch.set_num_threads(2)

# The tiny model: S=56, P=70 (tiles overlap on a 112 canvas), two taps.
SMALL_MODEL = dict(image_size=56, patch_image_size=70, target_image_size=112, features_list=(2, 4), dpam=3,
                   depth=3, n_ctx=6, t_n_ctx=2)
RUNTIME = ["--num_workers", "0", "--batch_size", "4", "--device", "cpu"]
# The same as flags, for the command-line tests.
SMALL = ["--image_size", "56", "--patch_image_size", "70", "--target_image_size", "112",
         "--features_list", "2", "4", "--dpam", "3", "--depth", "3", "--n_ctx", "6", "--t_n_ctx", "2", *RUNTIME]


def small_config(clip_file: Path, **changes) -> ModelConfig:
    return ModelConfig(pretrained=str(clip_file), **{**SMALL_MODEL, **changes})


def settings(cls: type, **values):
    """Settings of ``cls`` from flat keywords: those of ``RunOptions`` go into its ``run``, on top of
    the class's own default run options."""
    run_names = {f.name for f in fields(RunOptions)}
    base = next(f for f in fields(cls) if f.name == "run").default_factory()
    run = replace(base, **{k: v for k, v in values.items() if k in run_names})
    return cls(**{k: v for k, v in values.items() if k not in run_names}, run=run)


def train_small(data: Path, save_path: Path, clip_file: Path, epochs: int = 1, model: ModelConfig | None = None,
                **changes) -> list[dict]:
    """Train the tiny model through the library API."""
    config = settings(TrainConfig, data_path=data, save_path=save_path, epochs=epochs, batch_size=4, num_workers=0,
                      device="cpu", **changes)
    return train(config, model or small_config(clip_file))


@pytest.fixture(scope="session")
def clip_file(tmp_path_factory) -> Path:
    """A randomly initialised tiny CLIP saved as a plain OpenAI-format state dict."""
    return save_openai_format(tiny_clip(seed=0), tmp_path_factory.mktemp("weights") / "tiny_openai.pt")


def _dataset(root: Path, classes: list[str], seed: int) -> Path:
    write_mvtec_dataset(root, classes, n_good=3, n_defect=4, n_train=1, size=(64, 80), seed=seed)
    write_meta(root, mvtec_layout_index(root))
    return root


@pytest.fixture(scope="session")
def source_data(tmp_path_factory) -> Path:
    return _dataset(tmp_path_factory.mktemp("source"), ["stripes", "disk"], seed=1)


@pytest.fixture(scope="session")
def target_data(tmp_path_factory) -> Path:
    return _dataset(tmp_path_factory.mktemp("target"), ["checker", "ring"], seed=2)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, clip_file, source_data) -> Path:
    """Prompts trained one epoch on the tiny model, saved as epoch_1.pth in a folder."""
    out = tmp_path_factory.mktemp("ckpt")
    train_small(source_data, out, clip_file)
    return out


def predict_cli(*argv):
    """predict.py's command line; returns the rows of predictions.json."""
    cli.predict_main([*argv, *RUNTIME])
    save_path = argv[list(argv).index("--save_path") + 1]
    return json.loads((Path(save_path) / "predictions.json").read_text())["predictions"]


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


def run_items(model, items, batch_size=4):
    """(maps float16, masks, scores) of ``items`` through the library's one inference path."""
    maps, masks, scores = [], [], []
    run = RunOptions(batch_size=batch_size, num_workers=0)
    dataset = CanvasDataset(items, model.grid_for(run), run, masks=Masks.SCORED)
    for batch in iter_batches(model.model, dataset, map_norm="per-image"):
        maps.append(torch.stack(batch.maps).half().numpy())
        masks.append(torch.stack(batch.masks).numpy())
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


@pytest.fixture
def data(tmp_path):
    root = write_mvtec_dataset(tmp_path / "data", ["stripes"], n_good=2, n_defect=2, n_train=0, size=(48, 64), seed=4)
    write_meta(root, mvtec_layout_index(root))
    return root


def expect_user_error(capsys, main, argv, pattern, parser=None):
    """``main``: a command's entry (cli.test_main, ...), or a function run under ``parser``."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv) if parser is None else cli.run(main, parser, argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert re.search(pattern, err), err


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
    add("sixteen.png", Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257), (30, 50))
    add("cmyk.jpg", rgb.convert("CMYK"), (30, 50), quality=95)
    add("float.tif", Image.fromarray(np.asarray(rgb.convert("L"), np.float32)), (30, 50))
    add("unit_float.tif", Image.fromarray(np.asarray(rgb.convert("L"), np.float32) / 255), (30, 50))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: shown as 50 high, 30 wide
    add("exif_rotated.jpg", rgb, (50, 30), exif=exif)
    add("tiny.png", rgb.resize((5, 3)), (3, 5))
    add("large.png", rgb.resize((4000, 3000)), (3000, 4000))
    return out


def run_script(*argv, cwd=ROOT):
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True)


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


@pytest.fixture(scope="module")
def goods(tmp_path_factory):
    """Four good images of one part, as files."""
    folder = tmp_path_factory.mktemp("good")
    rng = np.random.default_rng(7)
    for k in range(4):
        Image.fromarray(synthetic_image("disk", 80, 100, rng)).save(folder / f"good_{k}.png")
    return sorted(folder.glob("*.png"))


@pytest.fixture(scope="module")
def with_train_split(tmp_path_factory):
    """Test classes with 4 good train images each, and a checkpoint trained 3 epochs on other classes."""
    root = tmp_path_factory.mktemp("fewshot")
    train_root = write_mvtec_dataset(root / "train", ["stripes", "disk"], n_good=3, n_defect=6, n_train=0,
                                     size=(112, 112), seed=3, defect_color=(220, 30, 30))
    write_meta(train_root, mvtec_layout_index(train_root))
    test_root = write_mvtec_dataset(root / "test", ["checker", "ring"], n_good=3, n_defect=6, n_train=4,
                                    size=(112, 112), seed=4)
    write_meta(test_root, mvtec_layout_index(test_root))
    return train_root, test_root


def write_custom_layout(root, with_masks):
    """Your own images in the folder layout: good/ and crack/ (3 each), masks in ground_truth/ if asked."""
    rng = np.random.default_rng(3)
    for folder in ("good", "crack"):
        (root / folder).mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(root / "good" / f"g{i}.png"), synthetic_image("waves", 48, 64, rng)[..., ::-1])
        bad, mask = paint_defect(synthetic_image("waves", 48, 64, rng), "blob", rng)
        cv2.imwrite(str(root / "crack" / f"c{i}.png"), bad[..., ::-1])
        if with_masks:
            (root / "ground_truth" / "crack").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "ground_truth" / "crack" / f"c{i}.png"), mask.astype(np.uint8) * 255)
