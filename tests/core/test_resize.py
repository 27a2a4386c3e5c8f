"""The global view's resize: the matrix form written into exported graphs computes what Pillow's
antialiased bicubic and PyTorch's ``F.interpolate(antialias=True)`` compute."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dhrclip.core import resize


@pytest.mark.parametrize("size_in,size_out", [((60, 90), (28, 28)), ((112, 336), (56, 56)), ((20, 30), (56, 70)),
                                              ((56, 56), (56, 56))])
def test_the_matrix_resize_is_pillows_and_pytorchs_antialiased_bicubic(monkeypatch, size_in, size_out):
    image = np.random.default_rng(0).random(size_in, dtype=np.float32)
    pillow = np.asarray(Image.fromarray(image, mode="F").resize(size_out[::-1], Image.Resampling.BICUBIC))
    rows = resize.resize_weights(size_in[0], size_out[0], torch.device("cpu"))
    cols = resize.resize_weights(size_in[1], size_out[1], torch.device("cpu"))
    matrix = (rows @ torch.from_numpy(image) @ cols.t()).numpy()
    assert np.abs(matrix - pillow).max() < 1e-4
    eager = F.interpolate(torch.from_numpy(image)[None, None], size=size_out, mode="bicubic", antialias=True,
                          align_corners=False)[0, 0].numpy()
    assert np.abs(matrix - eager).max() < 1e-4
    monkeypatch.setattr(resize, "exporting", lambda: True)  # the path a traced graph takes
    traced = resize.resize_antialiased(torch.from_numpy(image)[None, None].repeat(2, 3, 1, 1), size_out)
    assert traced.shape == (2, 3, *size_out) and np.abs(traced[1, 2].numpy() - eager).max() < 1e-4
