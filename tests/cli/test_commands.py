"""The command line: settings shown as flags in messages, --print_config and each command's flags."""
import numpy as np
from PIL import Image

from dhrclip import cli
from dhrclip.errors import UserError


def test_print_config_names_each_source(capsys):
    cli.train_main(["--train_data_path", "x", "--print_config", "--dpam", "7"])  # prints, trains nothing
    lines = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert lines["dpam"] == ["7", "argument"] and lines["depth"] == ["9", "default"]
    assert lines["quick_gelu"] == ["None", "backbone"]


def test_print_config_of_a_checkpoint(capsys, odd_checkpoint, tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    cli.predict_main(["--checkpoint_path", str(odd_checkpoint), "--input", str(tmp_path / "x.png"),
                      "--print_config", "--sigma", "4"])
    lines = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert lines["sigma"] == ["4.0", "argument"] and lines["dpam"] == ["2", "checkpoint"]
    assert lines["features_list"] == ["1", "3", "checkpoint"]
    assert not (tmp_path / "predictions").exists()
    cli.test_main(["--checkpoint_path", str(odd_checkpoint), "--print_config", "--model", "ViT-B-16"])  # no data
    lines = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert lines["model"][:2] == ["ViT-B-16", "argument;"] and lines["quick_gelu"] == ["None", "backbone"]
    assert "OpenAI's format builds the architecture" in " ".join(lines["model"])  # the weights are a file


def test_cli_shows_fields_as_flags():
    error = UserError("features_list [9] is outside the model's layers 1..4", field="features_list")
    assert cli.one_line(error) == "--features_list [9] is outside the model's layers 1..4"
    error = UserError("weights file not found: /x/model/pretrained.pt (give pretrained as a file)", field="pretrained")
    assert cli.one_line(error) == "weights file not found: /x/model/pretrained.pt (give --pretrained as a file)"
    assert cli.one_line(UserError("epochs must be at least 1, got 0", field="epochs"), {"epoch"}) == \
        "--epoch must be at least 1, got 0"
    error = UserError("run holds a previous run; continue it with `resume`, choose another save_path, or set "
                      "`overwrite` (not `unknown`)", field="save_path")
    assert cli.one_line(error, {"resume", "save_path", "overwrite"}) == \
        "run holds a previous run; continue it with --resume, choose another --save_path, or set --overwrite " \
        "(not unknown)"


def test_contradictory_flags_and_wrong_files_get_one_line(capsys, tmp_path, checkpoint):
    from conftest import expect_user_error

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    (tmp_path / "t.json").write_text("{}")
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    run = ["--input", str(tmp_path / "x.png"), "--save_path", str(tmp_path / "out")]
    expect_user_error(capsys, cli.predict_main, ["--checkpoint_path", str(checkpoint), *run, "--calibrate_on",
                                                 str(tmp_path), "--threshold_file", str(tmp_path / "t.json")],
                      r"--calibrate_on sets new thresholds and --threshold_file gives saved ones")
    expect_user_error(capsys, cli.predict_main, ["--checkpoint_path", str(checkpoint), *run, "--grid", "fixed",
                                                 "--max_tiles", "4"], r"--max_tiles bounds the tiles of --grid auto")
    expect_user_error(capsys, cli.predict_main, ["--checkpoint_path", str(tmp_path / "m.onnx"), *run],
                      r"is an ONNX file.*run it with --onnx")
    expect_user_error(capsys, cli.predict_main, ["--checkpoint_path", str(tmp_path / "t.json"), *run],
                      r"is a JSON file, not a prompt checkpoint")
