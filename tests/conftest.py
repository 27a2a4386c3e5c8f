"""Shared fixtures: a tiny OpenAI-format CLIP file and two small synthetic datasets."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dhrclip.indexing import mvtec_layout_index, write_meta  # noqa: E402
from dhrclip.synthetic import save_openai_format, tiny_clip, write_mvtec_dataset  # noqa: E402

torch.set_num_threads(2)

# Flags for the tiny model: S=56, P=70 (tiles overlap on a 112 canvas), two taps.
SMALL = ["--image_size", "56", "--patch_image_size", "70", "--target_image_size", "112",
         "--features_list", "2", "4", "--dpam", "3", "--depth", "3", "--n_ctx", "6", "--t_n_ctx", "2",
         "--num_workers", "0", "--batch_size", "4", "--device", "cpu"]


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
