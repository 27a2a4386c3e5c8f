"""Few-shot banks: nearest similarity in blocks equals a plain loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dhrclip.config import ModelConfig
from dhrclip.core import fewshot


def brute_nearest(queries, bank, owner, exclude):
    """For each query row, the largest cosine similarity to a bank row of another owner, by a loop."""
    out = []
    for i, q in enumerate(queries):
        best = -np.inf
        for j, b in enumerate(bank):
            if exclude is not None and owner[j] == exclude[i]:
                continue
            best = max(best, float(q @ b / (np.linalg.norm(q) * np.linalg.norm(b))))
        out.append(best)
    return np.array(out)


@pytest.mark.parametrize("chunk", [3, 4096])
def test_nearest_similarity_equals_a_loop_in_any_chunking(monkeypatch, chunk):
    monkeypatch.setattr(fewshot, "CHUNK", chunk)
    g = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(11, 5, generator=g), torch.randn(9, 5, generator=g)
    owner = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2])
    exclude = torch.tensor([0, 1, 2, -1, 0, 1, 2, -1, 0, 1, 2])
    normalised = torch.nn.functional.normalize(bank, dim=-1)
    for skip in (None, exclude):
        got = fewshot.nearest_similarity(queries, normalised, owner, skip).numpy()
        want = brute_nearest(queries.numpy(), bank.numpy(), owner.numpy(), None if skip is None else skip.numpy())
        assert np.allclose(got, want, atol=1e-6)


def test_a_good_token_scores_one_half_in_the_banks_units():
    """The unit is the bank's mean leave-one-out distance, so the bank's own tokens, each scored
    without its image's tokens, average exactly 0.5 per layer, whatever the layer's raw scale."""
    g = torch.Generator().manual_seed(1)
    centre = torch.randn(8, generator=g)
    # two layers whose tokens spread around one direction by very different amounts
    tokens = [torch.nn.functional.normalize(centre + torch.randn(12, 8, generator=g) * spread, dim=-1)
              for spread in (0.1, 2.0)]
    owner = torch.arange(3).repeat_interleave(4)  # 3 images of 4 tokens
    bank = fewshot.ReferenceBank(global_tokens=tokens, tile_tokens=tokens, global_owner=owner, tile_owner=owner,
                                 config=ModelConfig(pretrained="none"), sources=["a", "b", "c"])
    # each image as a batch entry of 1 class token + 4 patch tokens on a 2x2 grid, its own image excluded
    views = [torch.cat([torch.zeros(3, 1, 8), t.reshape(3, 4, 8)], dim=1) for t in tokens]
    scaled = bank.token_distances(views, views, (2, 2), (2, 2), exclude=torch.arange(3))
    raw = bank.token_distances(views, views, (2, 2), (2, 2), exclude=torch.arange(3), scaled=False)
    for g_scaled, t_scaled in scaled:
        assert float(g_scaled.mean()) == pytest.approx(0.5, abs=1e-6)
        assert float(t_scaled.mean()) == pytest.approx(0.5, abs=1e-6)
    assert float(raw[1][0].mean()) > 10 * float(raw[0][0].mean())  # the raw distances were far apart
