"""Write ROOT/meta.json for the dataset `dtd_synthetic`; --help shows the layouts it reads."""
from _common import dataset_main

if __name__ == "__main__":
    dataset_main("dtd_synthetic")
