"""train.py and dhrclip-train: learn the prompts on one dataset."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import TrainConfig, resolve_model_config
from .common import add_model_flags, join_processes, model_overrides, print_config, run
from .flags import add_settings, new_parser, settings_from


def parser() -> argparse.ArgumentParser:
    p = new_parser("Train DHR-CLIP prompts on one dataset (all of its test split, with masks).")
    add_settings(p, TrainConfig)
    add_model_flags(p, from_checkpoint=False)
    return p


def _train(args: argparse.Namespace) -> None:
    from ..detector.checkpoint import latest_checkpoint, read_checkpoint
    from ..engine.training import train

    data = args.train_data_path or Path(f"./data/{args.dataset or 'mvtec'}")
    config = settings_from(TrainConfig, args, data_path=data, device=join_processes(args.device))
    last = latest_checkpoint(args.resume) if args.resume is not None else None
    saved = read_checkpoint(last).config if last is not None else None
    resolved = resolve_model_config(model_overrides(args), saved=saved, resume=saved is not None)
    if args.print_config:
        print_config(resolved)
        return
    train(config, resolved.config)


def main(argv: list[str] | None = None) -> None:
    run(_train, parser(), argv)
