"""Flags made from settings: every setting with help is a flag whose default and help come from its
field, once; parsed flags go back into the same settings."""
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from dhrclip import cli
from dhrclip.cli.flags import SETTINGS, aliases, as_flags, settings_from
from dhrclip.config import EvalConfig, ModelConfig, PredictConfig, RunOptions, TrainConfig
from dhrclip.config.fields import flag_name

PARSERS = {"index": cli.index_parser, "train": cli.train_parser, "test": cli.evaluation_parser,
           "predict": cli.prediction_parser, "export": cli.export_parser, "app": cli.app_parser,
           "suite": cli.suite_parser, "demo": cli.demo_parser}


def actions(parser):
    return {action.dest: action for action in parser._actions}


@pytest.mark.parametrize("name", PARSERS)
def test_every_flag_has_help(name):
    for action in PARSERS[name]()._actions:
        assert action.help, (name, action.dest)


def test_each_settings_field_is_a_flag_with_the_fields_default_and_help():
    found = actions(cli.train_parser())
    for f in fields(TrainConfig):
        if f.name == "run":
            continue
        action = found[flag_name(f)]
        assert f.metadata["help"].split("`")[0] in action.help
        if f.default is not MISSING:
            assert action.default == f.default, f.name
    assert found["epoch"].default == 15 and found["train_data_path"].default is None
    run_defaults = {f.name: f.default for f in fields(RunOptions)}
    for name in ("batch_size", "num_workers", "bit_depth", "seed", "max_tiles", "device", "precision"):
        assert found[name].default == run_defaults[name], name
    # each command's own grid default: train and test fixed, the page auto (predict: from --onnx or auto)
    assert found["grid"].default == "fixed" and actions(cli.app_parser())["grid"].default == "auto"
    assert actions(cli.app_parser())["num_workers"].default == 0


def test_model_flags_default_to_not_given_and_say_the_checkpoints_setting_applies():
    found = actions(cli.evaluation_parser())
    for f in fields(ModelConfig):
        name = flag_name(f)
        if name is None:
            continue
        assert found[name].default is None and "the checkpoint's" in found[name].help, name
    assert "default: 336" in actions(cli.train_parser())["image_size"].help


def test_parsed_flags_make_the_settings():
    args = cli.evaluation_parser().parse_args(["--data_path", "d", "--k_shot", "2", "--grid", "auto",
                                               "--batch_size", "3", "--num_workers", "auto"])
    config = settings_from(EvalConfig, args)
    assert config.k_shot == 2 and config.data_path == Path("d")
    assert config.run == RunOptions(grid="auto", batch_size=3, num_workers="auto")
    args = cli.prediction_parser().parse_args(["--input", "x", "--num_workers", "2"])
    assert settings_from(PredictConfig, args, grid="auto", max_tiles=9).run.num_workers == 2


def test_a_bad_value_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        cli.evaluation_parser().parse_args(["--num_workers", "some"])
    assert "expected auto or a number, got 'some'" in capsys.readouterr().err


def test_help_names_settings_as_flags():
    assert aliases()["epochs"] == ("epoch",) and "train_data_path" in aliases()["data_path"]
    assert as_flags("with `grid` auto and `epochs`") == "with --grid auto and --epoch"
    assert "--seed" in actions(cli.evaluation_parser())["k_shot"].help


def test_every_settings_class_is_known_to_the_flags():
    assert {TrainConfig, EvalConfig, PredictConfig, ModelConfig} <= set(SETTINGS)


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_every_flag_has_help_that_states_its_default(command):
    import argparse

    from dhrclip.cli.flags import HelpFormatter

    parser = PARSERS[command]()
    shown = HelpFormatter(parser.prog)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = shown._get_help_string(action)
        assert action.help, f"{command} {action.option_strings} has no help"
        if action.default not in (None, False, argparse.SUPPRESS):
            value = " ".join(map(str, action.default)) if isinstance(action.default, list) else str(action.default)
            assert f"default: {value}" in text or f"default {value}" in text, \
                f"{command} {action.option_strings}: the help does not state the default {value}: {text!r}"
    assert not parser.prog.startswith("-"), parser.prog


def test_the_readmes_command_list_is_pyprojects():
    import re

    import tomllib
    from conftest import ROOT

    scripts = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
    readme = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"`(dhrclip-[a-z]+)`", readme))
    assert listed == scripts, (sorted(scripts - listed), sorted(listed - scripts))
    assert f"installs {len(scripts)} commands" in readme or f"{len(scripts)} commands" in readme
