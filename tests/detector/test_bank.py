"""Few-shot bank files: the one reader refuses every damaged part with one UserError naming the file
and the part, and a bank answers only for the model, width and grid it was built for."""
import json

import pytest
import torch
from safetensors.torch import save_file

from dhrclip.config import ModelConfig
from dhrclip.core.fewshot import ReferenceBank
from dhrclip.core.grid import AutoGrid, FixedGrid
from dhrclip.detector.bank import check_bank, read_bank
from dhrclip.errors import UserError

CONFIG = ModelConfig(pretrained="none", features_list=(2, 4), image_size=56, patch_image_size=70,
                     target_image_size=112, dpam=3, depth=3, n_ctx=6, t_n_ctx=2)
WIDTH = 16


def bank(**changes) -> ReferenceBank:
    g = torch.Generator().manual_seed(0)
    found = ReferenceBank(global_tokens=[torch.randn(6, WIDTH, generator=g) for _ in range(2)],
                          tile_tokens=[torch.randn(10, WIDTH, generator=g) for _ in range(2)],
                          global_owner=torch.tensor([0, 0, 0, 1, 1, 1]), tile_owner=torch.tensor([0] * 5 + [1] * 5),
                          config=CONFIG, sources=["a.png", "b.png"])
    for key, value in changes.items():
        setattr(found, key, value)
    return found


def test_a_saved_bank_reads_back_equal(tmp_path):
    bank().save(str(tmp_path / "bank.safetensors"))  # a plain string path works too
    read = read_bank(tmp_path / "bank.safetensors")
    assert read.sources == ["a.png", "b.png"] and read.config == CONFIG and read.grid == {"mode": "fixed"}
    assert all(torch.equal(a, b) for a, b in zip(read.tile_tokens, bank().tile_tokens))


def damaged(tmp_path, tensors=None, meta=None, drop=()):
    """A bank file with some tensors or metadata replaced (None removes an entry)."""
    bank().save(tmp_path / "ok.safetensors")
    from safetensors import safe_open
    with safe_open(str(tmp_path / "ok.safetensors"), framework="pt") as handle:
        found = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        info = dict(handle.metadata())
    found.update(tensors or {})
    info.update(meta or {})
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in found.items() if k not in drop},
              str(path), metadata={k: v for k, v in info.items() if k not in drop})
    return path


@pytest.mark.parametrize("change,part", [
    (dict(tensors={"tile.1": torch.zeros(10, WIDTH + 1)}), "tile.1"),             # another width
    (dict(tensors={"global.0": torch.zeros(6, 2, WIDTH)}), "global.0"),           # 3-D tokens
    (dict(drop=("tile.1",)), "tile.1"),                                          # a layer missing
    (dict(drop=("global_owner",)), "global_owner"),
    (dict(tensors={"global.2": torch.zeros(6, WIDTH), "tile.2": torch.zeros(10, WIDTH)}), "global.2"),  # more layers
    (dict(tensors={"global_owner": torch.tensor([0, 0, 0, 1, 1, 7])}), "global_owner"),   # an image it has not
    (dict(tensors={"tile_owner": torch.zeros(10)}), "tile_owner"),                # not an index
    (dict(tensors={"tile.0": torch.full((10, WIDTH), float("nan"))}), "tile.0"),
    (dict(meta={"sources": "not json"}), "sources"),
    (dict(meta={"sources": json.dumps({"a": 1})}), "sources"),
    (dict(meta={"config": "not json"}), "config"),
    (dict(meta={"config": json.dumps({"version": 1, "image_size": "abc"})}), "config.image_size"),
    (dict(meta={"max_tiles": "many"}), "max_tiles"),
    (dict(meta={"grid": "diagonal"}), "grid"),
])
def test_damaged_banks_are_one_user_error_naming_the_part(tmp_path, change, part):
    path = damaged(tmp_path, **change)
    with pytest.raises(UserError) as info:
        read_bank(path)
    assert str(path) in str(info.value) and f'"{part}"' in str(info.value), str(info.value)


def test_files_that_are_not_banks(tmp_path):
    (tmp_path / "fake.safetensors").write_bytes(b"not a bank")
    with pytest.raises(UserError, match="not a reference bank"):
        read_bank(tmp_path / "fake.safetensors")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match="not a reference bank written by save_reference"):
        read_bank(tmp_path / "other.safetensors")
    with pytest.raises(UserError, match="no such file"):
        read_bank(tmp_path / "absent.safetensors")


def test_a_bank_answers_only_for_its_settings_width_and_grid():
    fixed = FixedGrid(112, 70, 2)
    check_bank(bank(), CONFIG, WIDTH, fixed, "bank")
    check_bank(bank(), ModelConfig(**{**vars(CONFIG), "sigma": 2.0}), WIDTH, fixed, "bank")  # sigma plays no part
    with pytest.raises(UserError, match="built with target_image_size=112") as info:
        check_bank(bank(), ModelConfig(**{**vars(CONFIG), "target_image_size": 140}), WIDTH, fixed, "bank")
    assert info.value.field == "target_image_size"
    with pytest.raises(UserError, match="tokens of width 16") as info:
        check_bank(bank(), CONFIG, WIDTH * 2, fixed, "bank")
    with pytest.raises(UserError, match="built with grid fixed, and this run uses grid auto") as info:
        check_bank(bank(), CONFIG, WIDTH, AutoGrid(70, 9), "bank")
    assert info.value.field == "grid"
