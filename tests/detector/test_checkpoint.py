"""Prompt checkpoints: the one reader refuses every damaged part with one UserError naming the file
and the part, and resuming checks the optimizer, generator and epoch it needs."""
import signal
import subprocess
import sys

import pytest
import torch

from dhrclip.config import ModelConfig
from dhrclip.detector.checkpoint import read_checkpoint, read_resume_state, save_checkpoint
from dhrclip.errors import UserError

WIDTH, N_CTX = 8, 4


def prompts(**changes):
    found = {"ctx_pos": torch.zeros(1, 1, N_CTX, WIDTH), "ctx_neg": torch.zeros(1, 1, N_CTX, WIDTH),
             "compound_prompts_text.0": torch.zeros(2, WIDTH), "compound_prompts_text.1": torch.zeros(2, WIDTH)}
    found.update(changes)
    return {k: v for k, v in found.items() if v is not None}


def config(**changes):
    return {"version": 1, "pretrained": "none", "n_ctx": N_CTX, "depth": 3, "t_n_ctx": 2, **changes}


def written(tmp_path, state, name="epoch_1.pth"):
    save_checkpoint(tmp_path / name, state)
    return tmp_path / name


def test_a_sound_checkpoint_reads_back(tmp_path):
    ckpt = read_checkpoint(written(tmp_path, {"prompt_learner": prompts(), "config": config()}))
    assert ckpt.prompt_shapes() == {"n_ctx": N_CTX, "depth": 3, "t_n_ctx": 2} and ckpt.config.n_ctx == N_CTX


@pytest.mark.parametrize("state,part", [
    ({"prompt_learner": prompts(ctx_pos=torch.zeros(WIDTH))}, "ctx_pos"),                    # 1-D
    ({"prompt_learner": prompts(ctx_pos=torch.tensor(1.0))}, "ctx_pos"),                      # a scalar
    ({"prompt_learner": prompts(ctx_pos=[[0.0] * WIDTH] * N_CTX)}, "ctx_pos"),                # a list
    ({"prompt_learner": prompts(ctx_pos=torch.zeros(N_CTX, WIDTH, dtype=torch.long))}, "ctx_pos"),
    ({"prompt_learner": prompts(ctx_neg=torch.full((1, 1, N_CTX, WIDTH), float("nan")))}, "ctx_neg"),
    ({"prompt_learner": prompts(ctx_neg=torch.zeros(1, 1, N_CTX + 1, WIDTH))}, "ctx_neg"),
    ({"prompt_learner": prompts(ctx_pos=torch.zeros(1, 1, 10**5, 1))}, "ctx_pos"),            # absurd size
    ({"prompt_learner": prompts(**{"compound_prompts_text.x": torch.zeros(2, WIDTH)})}, "compound_prompts_text.x"),
    ({"prompt_learner": prompts(**{"compound_prompts_text.0": None})}, "compound_prompts_text"),  # layers 1 only
    ({"prompt_learner": prompts(**{"compound_prompts_text.1": torch.zeros(2, 3)})}, "compound_prompts_text.1"),
    ({"prompt_learner": prompts(), "config": config(image_size="abc")}, "config.image_size"),
    ({"prompt_learner": prompts(), "config": config(target_image_size=200000)}, "config.target_image_size"),
    ({"prompt_learner": prompts(), "config": config(features_list="24")}, "config.features_list"),
    ({"prompt_learner": prompts(), "config": config(sigma=float("nan"))}, "config.sigma"),
    ({"prompt_learner": prompts(), "config": config(version="1")}, "config.version"),
    ({"prompt_learner": prompts(), "config": "x"}, "config"),
    ({"prompt_learner": prompts(), "config": config(n_ctx=5)}, "config.n_ctx"),               # not its tensors'
])
def test_damaged_checkpoints_are_one_user_error_naming_the_part(tmp_path, state, part):
    path = written(tmp_path, state)
    with pytest.raises(UserError) as info:
        read_checkpoint(path)
    assert str(path) in str(info.value) and f'"{part}"' in str(info.value), str(info.value)


def test_not_a_checkpoint_at_all(tmp_path):
    with pytest.raises(UserError, match="no prompt_learner"):
        read_checkpoint(written(tmp_path, {"weights": torch.zeros(3)}))
    (tmp_path / "junk.pth").write_bytes(b"not a zip and not a pickle")
    with pytest.raises(UserError, match="not a PyTorch file"):
        read_checkpoint(tmp_path / "junk.pth")


def resumable(**changes):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    state = {"prompt_learner": prompts(), "config": config(), "optimizer": optimizer.state_dict(),
             "generator": torch.Generator().get_state(), "epoch": 2, "train_config": {}}
    state.update(changes)
    return state


def test_a_sound_resume_state_reads_back(tmp_path):
    state = read_resume_state(read_checkpoint(written(tmp_path, resumable())))
    assert state.epoch == 2 and state.generator.dtype == torch.uint8


@pytest.mark.parametrize("changes,part", [
    ({"optimizer": "abc"}, "optimizer"),
    ({"optimizer": {"state": 5, "param_groups": []}}, "optimizer"),
    ({"optimizer": {"state": {}, "param_groups": [{"params": "x"}]}}, "optimizer"),
    ({"generator": [1, 2, 3]}, "generator"),
    ({"generator": torch.zeros(5)}, "generator"),
    ({"epoch": "abc"}, "epoch"),
    ({"epoch": 0}, "epoch"),
    ({"epoch": 1e400}, "epoch"),
    ({"train_config": "x"}, "train_config"),
])
def test_damaged_resume_states_are_one_user_error_naming_the_part(tmp_path, changes, part):
    path = written(tmp_path, resumable(**changes))
    with pytest.raises(UserError) as info:
        read_resume_state(read_checkpoint(path))
    assert str(path) in str(info.value) and f'"{part}"' in str(info.value), str(info.value)
    assert info.value.field == "resume"


def test_a_compressed_archive_that_declares_more_than_it_holds_is_refused_before_it_inflates(tmp_path):
    """A zip bomb: a small file whose entries declare far more bytes than it holds."""
    import zipfile

    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("bomb/data/0", bytes(50_000_000))
    assert path.stat().st_size < 1_000_000
    with pytest.raises(UserError, match="declares 50 MB of data in a file of"):
        read_checkpoint(path)


def test_checkpoint_records_a_versioned_model_config(odd_checkpoint, clip_file):
    saved = torch.load(odd_checkpoint, weights_only=True)["config"]
    assert saved["version"] == 1 and saved["features_list"] == [1, 3] and saved["dpam"] == 2
    assert saved["pretrained"] == str(clip_file) and saved["quick_gelu"] is True
    assert saved["weights_fingerprint"].startswith(f"size:{clip_file.stat().st_size}:")
    assert ModelConfig.from_dict(saved).to_dict() == saved


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
    prompts = {"ctx_pos": torch.zeros(1, 1, 4, 8), "ctx_neg": torch.zeros(1, 1, 4, 8)}
    save_checkpoint(path, {"epoch": 1, "prompt_learner": prompts})
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE.format(path=str(path))])
    assert proc.returncode == -signal.SIGKILL
    assert read_checkpoint(path).state["epoch"] == 1
