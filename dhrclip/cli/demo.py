"""demo.py and dhrclip-demo: the whole protocol on synthetic data."""
from __future__ import annotations

import argparse
import shlex
import sys

from ..config import DemoConfig
from .common import run
from .flags import add_settings, new_parser, settings_from


def parser() -> argparse.ArgumentParser:
    p = new_parser("Run the complete DHR-CLIP protocol on synthetic data: train on some classes, test zero-shot "
                   "on others.")
    add_settings(p, DemoConfig, only=("save_path", "model", "pretrained", "epochs", "device", "num_workers"))
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def _demo(args: argparse.Namespace) -> None:
    from ..engine.demo import run_demo

    results = run_demo(settings_from(DemoConfig, args))
    checkpoint = results["trained"]["checkpoint"]
    print(f"Your own images with these prompts (the checkpoint brings back its settings):\n"
          f"  {shlex.quote(sys.executable)} predict.py --checkpoint_path {shlex.quote(checkpoint)} "
          f"--input YOUR_IMAGES/ --save_path predictions/")


def main(argv: list[str] | None = None) -> None:
    run(_demo, parser(), argv)
