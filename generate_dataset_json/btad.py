"""Write ROOT/meta.json for the dataset `btad`; --help shows the layouts it reads."""
from _common import dataset_main

if __name__ == "__main__":
    dataset_main("btad")
