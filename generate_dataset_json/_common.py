"""Shared command line of the dataset index generators."""
import argparse
from pathlib import Path

from dhrclip.cli import run
from dhrclip.indexing import mvtec_layout_index, write_meta


def mvtec_style_main(description: str, standard_classes: list[str]) -> None:
    """Index a dataset in the MVTec AD layout and write ROOT/meta.json."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--root", type=Path, required=True, help="dataset root")
    parser.add_argument("--classes", nargs="+", default=None, help="only these classes (default: all found)")
    parser.add_argument("--debug", action="store_true")
    run(lambda a: write_meta(a.root, mvtec_layout_index(a.root, a.classes, standard_classes)), parser)
