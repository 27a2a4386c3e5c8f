"""Write ROOT/meta.json for the dataset `mvtec_ad2`; --help shows the layouts it reads."""
from _common import dataset_main

if __name__ == "__main__":
    dataset_main("mvtec_ad2")
