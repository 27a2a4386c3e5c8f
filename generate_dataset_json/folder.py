"""Write ROOT/meta.json for your own images: a folder layout or a CSV (``dhrclip-index folder``;
--help shows the layouts)."""
from _common import dataset_main

if __name__ == "__main__":
    dataset_main("folder")
