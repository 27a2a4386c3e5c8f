"""train.py and dhrclip-train: learn the prompts on one dataset."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import TrainConfig, resolve_model_config
from .common import add_model_flags, join_processes, model_overrides, print_config, run
from .flags import add_settings, explicit_settings, new_parser, settings_from


def parser() -> argparse.ArgumentParser:
    p = new_parser("Train DHR-CLIP prompts on one dataset (all of its test split, with masks).")
    add_settings(p, TrainConfig)
    add_model_flags(p, from_checkpoint=False)
    return p


def _train(args: argparse.Namespace) -> None:
    from ..engine.training import resume_point, train

    device = join_processes(args.device)
    saved = None
    if args.resume is not None:  # the recorded run, with the flags written on top
        checkpoint, state = resume_point(args.resume)
        given = explicit_settings(TrainConfig, args, args.written)
        config = TrainConfig.continuing(state.train_config, {**given, "device": device}, args.resume,
                                        f"checkpoint {checkpoint.path}")
        saved = checkpoint.config
    else:
        data = args.train_data_path or Path(f"./data/{args.dataset or 'mvtec'}")
        config = settings_from(TrainConfig, args, data_path=data, device=device)
    resolved = resolve_model_config(model_overrides(args), saved=saved, resume=saved is not None)
    if args.print_config:
        print_config(resolved)
        return
    try:
        train(config, resolved.config)
    except KeyboardInterrupt:
        if any(config.save_path.glob("epoch_*.pth")):
            print(f"to continue this run: train.py --resume {config.save_path}", file=sys.stderr)
        raise


def main(argv: list[str] | None = None) -> None:
    run(_train, parser(), argv)
