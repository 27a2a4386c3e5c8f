"""Write ROOT/meta.json for VisA from ROOT/split_csv/1cls.csv."""
import argparse
from pathlib import Path

from _common import run

from dhrclip.indexing import visa_index, write_meta

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="VisA root (holding split_csv/)")
    parser.add_argument("--classes", nargs="+", default=None, help="only these classes (default: all)")
    parser.add_argument("--debug", action="store_true")
    run(lambda a: write_meta(a.root, visa_index(a.root, a.classes)), parser)
