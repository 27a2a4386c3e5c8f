"""Write ROOT/meta.json for the dataset `tn3k`; --help shows the layouts it reads."""
from _common import dataset_main

if __name__ == "__main__":
    dataset_main("tn3k")
