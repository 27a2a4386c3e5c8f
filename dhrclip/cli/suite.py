"""dhrclip-suite (scripts/zero_shot_suite.sh): one checkpoint on every benchmark dataset under a root."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import EvalConfig
from ..errors import UserError
from .common import add_checkpoint_flag, add_model_flags, load_detector, run
from .flags import add_settings, new_parser, settings_from


def parser() -> argparse.ArgumentParser:
    p = new_parser("Test one checkpoint zero-shot on every benchmark dataset under a data root (one folder per "
                   "dataset, named as its generator in generate_dataset_json/), indexing those without a meta.json; "
                   "writes one combined table (suite.md, suite.json) and each dataset's results.",
                   prog="dhrclip-suite")
    add_checkpoint_flag(p, required=True)
    p.add_argument("--data_path", type=Path, required=True, help="data root holding one folder per dataset")
    add_settings(p, EvalConfig, exclude=("data_path", "dataset", "classes", "vis"),
                 defaults={"save_path": Path("./results/zero_shot_suite")})
    p.add_argument("--datasets", nargs="+", default=None, metavar="NAME",
                   help="only these datasets (default: every known one that is present)")
    p.add_argument("--reindex", action="store_true",
                   help="rebuild every present dataset's meta.json (default: use an existing one)")
    add_model_flags(p, from_checkpoint=True)
    return p


def _suite(args: argparse.Namespace) -> None:
    from ..engine.suite import run_suite

    settings = settings_from(EvalConfig, args)
    if not args.print_config and not args.data_path.is_dir():  # before the model loads
        raise UserError(f"data root not found: {args.data_path}", field="data_path")
    model = load_detector(args, settings.run)
    if model is not None:
        report = run_suite(model, args.data_path, settings, args.datasets, args.reindex)
        if report["failed"]:
            sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    run(_suite, parser(), argv)
