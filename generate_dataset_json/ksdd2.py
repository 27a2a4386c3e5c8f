"""Write ROOT/meta.json for the dataset `ksdd2`; --help shows the layouts it reads."""
from _common import dataset_main

if __name__ == "__main__":
    dataset_main("ksdd2")
