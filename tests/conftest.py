"""Shared fixtures: a tiny OpenAI-format CLIP file, two small synthetic datasets, small settings."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dhrclip.config import ModelConfig, TrainConfig
from dhrclip.data.indexing import mvtec_layout_index, write_meta
from dhrclip.data.synthetic import save_openai_format, tiny_clip, write_mvtec_dataset
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


def train_small(data: Path, save_path: Path, clip_file: Path, epochs: int = 1, model: ModelConfig | None = None,
                **settings) -> list[dict]:
    """Train the tiny model through the library API."""
    config = TrainConfig(data_path=data, save_path=save_path, epochs=epochs, batch_size=4, num_workers=0,
                         device="cpu", **settings)
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
