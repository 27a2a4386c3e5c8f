"""test.py and dhrclip-test: zero-shot (or few-shot) metrics of a checkpoint on a dataset."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import EvalConfig
from .common import EXIT_SKIPPED, add_checkpoint_flag, add_model_flags, load_detector, run
from .flags import add_settings, new_parser, settings_from


def parser() -> argparse.ArgumentParser:
    p = new_parser("Test DHR-CLIP prompts zero-shot on a dataset: per-class table, log.txt and results.json. "
                   "Model settings default to those the checkpoint was trained with.")
    add_checkpoint_flag(p, default=Path("./checkpoint"))
    add_settings(p, EvalConfig)
    add_model_flags(p, from_checkpoint=True)
    return p


def _test(args: argparse.Namespace) -> None:
    from ..data.meta import read_meta
    from ..engine.evaluation import evaluate

    config = settings_from(EvalConfig, args, data_path=args.data_path or Path(f"./data/{args.dataset or 'mvtec'}"))
    if not args.print_config:
        read_meta(config.data_path, "test", config.classes)  # a wrong dataset fails before the model loads
    model = load_detector(args, config.run)
    if model is not None and evaluate(model, config)["skipped"]:
        sys.exit(EXIT_SKIPPED)


def main(argv: list[str] | None = None) -> None:
    run(_test, parser(), argv)
