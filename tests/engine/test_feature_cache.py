"""The training feature cache stores and returns exactly what it was given, wherever it lives."""
import pytest
import torch

from dhrclip.core.grid import TileGrid
from dhrclip.core.network import ViewFeatures
from dhrclip.engine import feature_cache
from dhrclip.engine.feature_cache import FeatureCache


def batch(b, tiles=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = ViewFeatures(
        global_tokens=[torch.randn(b, 5, 8, generator=g) for _ in range(2)],
        tile_tokens=[torch.randn(b * tiles, 3, 8, generator=g) for _ in range(2)],
        global_embedding=torch.randn(b, 8, generator=g),
        tile_embedding=torch.randn(b * tiles, 8, generator=g),
        global_grid=(2, 2), tile_grid=(1, 2), tiles=TileGrid.square(6, 3), global_size=(4, 4))
    return feats, torch.rand(b, 6, 6, generator=g) > 0.5, torch.arange(b) % 2


@pytest.mark.parametrize("host_free,where", [(10**12, "host"), (0, "disk")])
def test_auto_picks_host_memory_or_disk_and_round_trips(tmp_path, monkeypatch, host_free, where):
    monkeypatch.setattr(feature_cache, "_host_bytes_available", lambda: host_free)
    cache = FeatureCache("auto", 6, torch.device("cpu"), tmp_path / "cache")
    first, second = batch(4, seed=1), batch(2, seed=2)
    cache.store(torch.tensor([5, 0, 3, 1]), *first, tiles=4)
    assert not cache.complete
    cache.store(torch.tensor([2, 4]), *second, tiles=4)
    assert cache.complete and cache.where == where
    feats, masks, labels = cache.load(torch.tensor([3, 4]), torch.device("cpu"))
    want = [first[0].global_tokens[1][2], second[0].global_tokens[1][1]]
    assert torch.equal(feats.global_tokens[1], torch.stack(want))
    assert torch.equal(feats.tile_tokens[0][:4], first[0].tile_tokens[0][8:12])
    assert torch.equal(masks[1], second[1][1]) and labels.tolist() == [first[2][2].item(), second[2][1].item()]
    assert feats.global_grid == (2, 2) and feats.tile_grid == (1, 2)
    cache.close()
    assert not (tmp_path / "cache").exists()


def test_auto_without_room_anywhere_caches_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(feature_cache, "_host_bytes_available", lambda: 0)
    monkeypatch.setattr(feature_cache, "_disk_bytes_available", lambda folder: 1000)
    cache = FeatureCache("auto", 2, torch.device("cpu"), tmp_path / "cache")
    cache.store(torch.tensor([0, 1]), *batch(2), tiles=4)
    assert cache.where == "nowhere" and not cache.complete and not (tmp_path / "cache").exists()
    cache.close()


def test_a_disk_cache_reserves_its_space_before_mapping_it(tmp_path):
    """The cache files hold their blocks before anything is written into the memory map, so a
    full disk shows at creation (see tests/scenarios/test_faults.py) and not as a bus error."""
    cache = FeatureCache("disk", 6, torch.device("cpu"), tmp_path / "cache")
    cache.store(torch.tensor([0, 1]), *batch(2), tiles=4)
    files = sorted((tmp_path / "cache").glob("slot_*.bin"))
    assert files and all(f.stat().st_blocks * 512 >= f.stat().st_size > 0 for f in files)
    cache.close()
