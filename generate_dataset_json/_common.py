"""The generators are thin wrappers of ``dhrclip-index NAME`` (users' scripts call them)."""
import sys

from dhrclip.cli import index_main


def dataset_main(name: str) -> None:
    """``dhrclip-index name`` with this script's flags: index --root and write ROOT/meta.json."""
    index_main([name, *sys.argv[1:]])
