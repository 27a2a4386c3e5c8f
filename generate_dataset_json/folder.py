"""Write ROOT/meta.json for your own images: a folder layout or a CSV.

Folder layout (one class per ROOT, or one per subfolder of ROOT):
    good/            normal images
    <defect>/        anomalous images, one folder per defect type
    ground_truth/<defect>/<stem>_mask.png  (or <stem>.png): optional masks
CSV (--csv FILE): columns image,mask,label,class; mask may be empty; label 0/1 or normal/anomaly.
"""
import argparse
from pathlib import Path

from _common import run

from dhrclip.data.indexing import csv_index, folder_index, write_meta

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="dataset root; meta.json is written here")
    parser.add_argument("--class_name", default=None, help="class name of a single-class ROOT (default: its name)")
    parser.add_argument("--csv", type=Path, default=None, help="index this CSV instead of the folder layout")
    parser.add_argument("--debug", action="store_true")
    run(lambda a: write_meta(a.root, csv_index(a.root, a.csv) if a.csv else folder_index(a.root, a.class_name)),
        parser)
