"""Shared command line of the dataset index generators."""
import argparse
from pathlib import Path

from dhrclip.cli import run
from dhrclip.data.datasets import dataset
from dhrclip.data.indexing import write_meta


def dataset_main(name: str) -> None:
    """Index dataset ``name`` at --root and write ROOT/meta.json; --help shows the layouts read."""
    spec = dataset(name)
    parser = argparse.ArgumentParser(description=f"Write ROOT/meta.json for {spec.title} ({spec.url}).\n\n"
                                                 f"{spec.layout}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="dataset root; meta.json is written here")
    parser.add_argument("--classes", nargs="+", default=None, help="only these classes (default: all found)")
    parser.add_argument("--debug", action="store_true")
    run(lambda a: write_meta(a.root, spec.index(a.root, a.classes)), parser)
