"""Few-shot banks: nearest similarity in blocks equals a plain loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch

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
