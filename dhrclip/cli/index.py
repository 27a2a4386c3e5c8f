"""dhrclip-index: write ROOT/meta.json, the index every command reads, for a benchmark dataset or
for your own images (``folder``: a folder layout or a CSV). The scripts in generate_dataset_json/
call it with their dataset's name."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..data.datasets import DATASETS
from .common import run
from .flags import HelpFormatter, new_parser, path_arg

FOLDER = "folder"
FOLDER_LAYOUT = """Your own images, in a folder layout (one class per ROOT, or one per subfolder of ROOT):
    good/            normal images
    <defect>/        anomalous images, one folder per defect type
    ground_truth/<defect>/<stem>_mask.png  (or <stem>.png): optional masks
    train/good/      optional: normal training images, the pool test.py --k_shot draws from
or listed in a CSV (--csv FILE) with columns image,mask,label,class and optionally split: mask may be
empty; label 0/1 or normal/anomaly; split test (the default) or train (normal training images, for
--k_shot)."""


def parser() -> argparse.ArgumentParser:
    p = new_parser("Write ROOT/meta.json for a benchmark dataset or for your own images; "
                   "`dhrclip-index NAME --help` shows the layouts NAME reads.", prog="dhrclip-index")
    names = p.add_subparsers(dest="dataset", required=True, metavar="NAME",
                             help=f"{FOLDER} (your own images) or one of: {', '.join(DATASETS)}")
    own = names.add_parser(FOLDER, description=FOLDER_LAYOUT, formatter_class=_Layout,
                           help="your own images: a folder layout or a CSV")
    _root(own)
    own.add_argument("--class_name", help="class name of a one-class ROOT (default: its folder's name)")
    own.add_argument("--csv", type=path_arg, help="index this CSV instead of the folder layout (default: the folder "
                                                  "layout)")
    own.add_argument("--train_good", type=path_arg,
                     help="a folder of normal training images of a one-class ROOT, for --k_shot (default: "
                          "ROOT/train/good/ if present)")
    for name, spec in DATASETS.items():
        sub = names.add_parser(name, description=f"Write ROOT/meta.json for {spec.title} ({spec.url}).\n\n"
                                                 f"{spec.layout}", formatter_class=_Layout, help=spec.title)
        _root(sub)
        sub.add_argument("--classes", nargs="+", help="only these classes (default: all found)")
    return p


class _Layout(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The layouts as written, the flags' defaults stated."""


def _root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=path_arg, required=True, help="dataset root; meta.json is written here")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def _index(args: argparse.Namespace) -> None:
    from ..data.indexing import csv_index, folder_index, write_meta

    root: Path = args.root
    if args.dataset == FOLDER:
        meta = csv_index(root, args.csv) if args.csv else folder_index(root, args.class_name, args.train_good)
    else:
        meta = DATASETS[args.dataset].index(root, args.classes)
    write_meta(root, meta)


def main(argv: list[str] | None = None) -> None:
    run(_index, parser(), argv)
