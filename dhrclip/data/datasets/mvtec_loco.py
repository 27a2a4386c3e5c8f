"""MVTec LOCO AD: 5 classes (breakfast_box, juice_bottle, pushpins, screw_bag, splicing_connectors).

    <class>/train/good/000.png                         normal training images
    <class>/validation/good/000.png                    normal validation images: left out
    <class>/test/{good,logical_anomalies,structural_anomalies}/000.png
    <class>/ground_truth/<defect>/000/000.png          one folder per image, named after it,
    <class>/ground_truth/<defect>/000/001.png          holding one or more masks

An image's masks are read as their union. Mask values are not 0/255: each
defect type is painted with its own value (defects_config.json), so any value
above 0 is anomalous.
"""
from __future__ import annotations

from pathlib import Path

from ..indexing import Index, count_images, images_in

CLASSES = ["breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors"]


def index(root: Path, classes: list[str] | None = None) -> dict:
    idx = Index(root, "mvtec_loco", classes)
    for folder in sorted(p for p in idx.root.iterdir() if (p / "test").is_dir()):
        cls = folder.name
        if (folder / "train" / "good").is_dir():
            for image in images_in(folder / "train" / "good"):
                idx.add("train", cls, image, 0, specie="good")
        for label in sorted(p for p in (folder / "test").iterdir() if p.is_dir()):
            anomaly = int(label.name != "good")
            for image in images_in(label):
                mask_folder = folder / "ground_truth" / label.name / image.stem  # one folder of masks per image
                masks = images_in(mask_folder) if anomaly and mask_folder.is_dir() else []
                if anomaly and not masks:
                    idx.skip("anomalous images without a ground_truth/<defect>/<image>/ folder", cls=cls)
                    continue
                idx.add("test", cls, image, anomaly, masks or None, label.name)
        idx.skip("validation/ images", count_images(folder / "validation"), cls=cls)
    return idx.meta()
