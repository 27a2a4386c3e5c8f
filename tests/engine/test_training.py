"""Prompt training: the loop, its feature cache, resuming, and the batches of grid groups."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import RUNTIME, SMALL, expect_user_error, settings, small_config, train_small

from dhrclip import cli
from dhrclip.config import resolve_model_config
from dhrclip.detector.checkpoint import read_checkpoint
from dhrclip.detector.signature import RESUME, Signature
from dhrclip.engine import training
from dhrclip.errors import UserError


def test_resuming_with_other_settings_is_refused(tmp_path, clip_file, source_data):
    train_small(source_data, tmp_path / "run", clip_file, epochs=1)
    with pytest.raises(SystemExit):
        cli.train_main(["--train_data_path", str(source_data), "--save_path", str(tmp_path / "run"),
                        "--resume", str(tmp_path / "run"), "--epoch", "2", "--dpam", "2", *RUNTIME])
    cli.train_main(["--train_data_path", str(source_data), "--save_path", str(tmp_path / "run"),
                    "--resume", str(tmp_path / "run"), "--epoch", "2", *RUNTIME])  # no flags: the checkpoint's
    assert read_checkpoint(tmp_path / "run").state["epoch"] == 2
    saved = small_config(clip_file)
    with pytest.raises(UserError, match="dpam=4 differs from the checkpoint being resumed") as error:
        current = resolve_model_config({"dpam": 4}, saved=saved, resume=True).config
        Signature(saved, {"mode": "fixed"}).check(Signature(current, {"mode": "fixed"}), RESUME, "checkpoint")
    assert error.value.field == "dpam"


def test_resuming_without_a_model_uses_the_checkpoint_settings(tmp_path, clip_file, source_data):
    train_small(source_data, tmp_path / "run", clip_file, model=small_config(clip_file, sigma=3.0))
    from dhrclip import TrainConfig, train
    train(settings(TrainConfig, data_path=source_data, save_path=tmp_path / "run", epochs=2, resume=tmp_path / "run",
                      batch_size=4, num_workers=0, device="cpu"))
    assert read_checkpoint(tmp_path / "run").config.sigma == 3.0


def losses_of(history):
    return [epoch["loss"] for epoch in history]


def test_feature_cache_modes_give_the_same_losses(tmp_path, clip_file, source_data):
    losses = {mode: losses_of(train_small(source_data, tmp_path / mode, clip_file, epochs=3, feature_cache=mode))
              for mode in ("off", "memory", "disk")}
    assert len(losses["off"]) == 3 and losses["off"][2] < losses["off"][0]
    assert np.allclose(losses["memory"], losses["off"], rtol=1e-5)
    assert np.allclose(losses["disk"], losses["off"], rtol=1e-5)
    assert not (tmp_path / "disk" / "feature_cache").exists()


def test_resume_reaches_the_same_state_as_an_uninterrupted_run(tmp_path, clip_file, source_data):
    full = losses_of(train_small(source_data, tmp_path / "full", clip_file, epochs=3))
    first = losses_of(train_small(source_data, tmp_path / "part", clip_file, epochs=2))
    rest = losses_of(train_small(source_data, tmp_path / "part", clip_file, epochs=3, resume=tmp_path / "part"))
    assert np.allclose(first + rest, full, rtol=1e-6)
    a = read_checkpoint(tmp_path / "full" / "epoch_3.pth").prompts
    b = read_checkpoint(tmp_path / "part" / "epoch_3.pth").prompts
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


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


def test_training_with_auto_groups_batches_by_grid(painted, tmp_path, clip_file, monkeypatch):
    from dhrclip.core.network import DHRCLIPNetwork

    _, data = painted
    shapes = []
    encode = DHRCLIPNetwork.encode_views

    def counted(self, canvas, placements=None):
        shapes.append(tuple(canvas.shape[-2:]))
        return encode(self, canvas, placements)

    monkeypatch.setattr(DHRCLIPNetwork, "encode_views", counted)
    history = train_small(data, tmp_path / "ckpt", clip_file, epochs=2, grid="auto")
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    assert set(shapes) == {(70, 210), (210, 70)}  # every batch holds one grid's canvases (1x3 or 3x1 tiles)
    assert len(shapes) == -(-9 // 4) * 2  # epoch 1 only: 9 images of each grid in batches of 4; then the cache
    saved = torch.load(tmp_path / "ckpt" / "epoch_2.pth", weights_only=False)
    assert saved["train_config"]["grid"] == "auto"


def test_a_folder_holding_a_run_is_refused_or_replaced_whole(tmp_path, clip_file, source_data):
    """Training into a folder that holds another run would overwrite its first epochs and keep its later
    ones, which test.py --checkpoint_path DIR then picks: refused, unless resumed or overwritten."""
    from conftest import train_small

    from dhrclip.errors import UserError

    train_small(source_data, tmp_path / "run", clip_file, epochs=3, save_freq=1)
    with pytest.raises(UserError, match="holds a previous run \\(epoch_1.pth, epoch_2.pth, epoch_3.pth\\)") as info:
        train_small(source_data, tmp_path / "run", clip_file, epochs=1)
    assert info.value.field == "save_path"
    train_small(source_data, tmp_path / "run", clip_file, epochs=1, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "run").glob("epoch_*.pth")) == ["epoch_1.pth"]  # one run, whole
    with pytest.raises(UserError, match="has trained 1 epoch\\(s\\) already, and epochs is 1") as info:
        train_small(source_data, tmp_path / "run", clip_file, epochs=1, resume=tmp_path / "run")
    assert info.value.field == "epochs"


def test_an_interrupted_run_resumes_with_only_resume(tmp_path, clip_file, source_data, monkeypatch, capsys):
    """A 4-epoch run stopped by Ctrl-C after epoch 2 says how to continue; ``--resume DIR`` alone, from
    another working folder, continues it in DIR on its data to epoch 4, reaching the prompts of an
    uninterrupted run. Another dataset is refused; a finished run says how to train more."""
    start = ["--train_data_path", str(source_data), "--pretrained", str(clip_file), "--epoch", "4", *SMALL]
    cli.train_main([*start, "--save_path", str(tmp_path / "full")])
    reported = training._report

    def interrupt_after_two(epoch, config):
        reported(epoch, config)
        if epoch["epoch"] == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(training, "_report", interrupt_after_two)
    with pytest.raises(SystemExit) as info:
        cli.train_main([*start, "--save_path", str(tmp_path / "run")])
    assert info.value.code == 130 and f"train.py --resume {tmp_path / 'run'}" in capsys.readouterr().err
    monkeypatch.setattr(training, "_report", reported)
    monkeypatch.chdir(tmp_path)  # no ./data/mvtec here: the data must come from the checkpoint
    cli.train_main(["--resume", str(tmp_path / "run")])
    done = read_checkpoint(tmp_path / "run")
    assert done.path.name == "epoch_4.pth" and sorted(p.name for p in tmp_path.iterdir()) == ["full", "run"]
    full = read_checkpoint(tmp_path / "full" / "epoch_4.pth").prompts
    assert all(torch.allclose(full[k], done.prompts[k], atol=1e-6) for k in full)
    assert done.state["train_config"]["data_path"] == str(source_data)
    expect_user_error(capsys, cli.train_main, ["--resume", str(tmp_path / "run")], "raise --epoch above 4")
    expect_user_error(capsys, cli.train_main, ["--resume", str(tmp_path / "run"), "--train_data_path",
                                               str(tmp_path / "full")], "other data would make it another run")


def test_resume_applies_a_new_learning_rate_and_refuses_damaged_or_foreign_records(tmp_path, clip_file, source_data,
                                                                                  monkeypatch, capsys):
    from dhrclip import TrainConfig

    monkeypatch.chdir(source_data.parent)  # a relative data path, resumed below from another folder
    cli.train_main(["--train_data_path", source_data.name, "--pretrained", str(clip_file), "--epoch", "1", *SMALL,
                    "--save_path", str(tmp_path / "run")])
    assert read_checkpoint(tmp_path / "run").state["train_config"]["data_path"] == str(source_data.resolve())
    monkeypatch.chdir(tmp_path)
    cli.train_main(["--resume", str(tmp_path / "run"), "--epoch", "2", "--learning_rate", "0.02"])
    state = read_checkpoint(tmp_path / "run").state
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [0.02]
    assert state["train_config"]["learning_rate"] == 0.02 and state["epoch"] == 2
    expect_user_error(capsys, cli.train_main, ["--resume", str(tmp_path / "run"), "--epoch", "3", "--dataset",
                                               "visa"], r"trained on --dataset source0, not visa; .* other data")
    record = dict(state["train_config"], batch_size=8.5)
    with pytest.raises(UserError, match="records batch_size 8.5") as info:
        TrainConfig.continuing(record, {}, tmp_path / "run", "checkpoint x")
    assert info.value.field == "resume"
    with pytest.raises(UserError, match="cannot be resumed") as info:
        TrainConfig.continuing(dict(state["train_config"], grid="sideways"), {}, tmp_path / "run", "checkpoint x")
    assert info.value.field == "resume"
