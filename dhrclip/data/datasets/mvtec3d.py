"""MVTec 3D-AD, RGB only: 10 classes (bagel, cable_gland, carrot, cookie, dowel, foam, peach,
potato, rope, tire).

    <class>/train/good/rgb/000.png                     normal training images
    <class>/train/good/xyz/000.tiff                    point clouds: left out
    <class>/validation/good/...                        left out
    <class>/test/{good,<defect>}/rgb/000.png
    <class>/test/{good,<defect>}/gt/000.png            masks named as their images (empty for good)
    <class>/calibration/camera_parameters.json

Only ``rgb/`` images are indexed; the ``xyz/`` files are counted as left out.
"""
from __future__ import annotations

from pathlib import Path

from ..indexing import Index, count_images, images_in

CLASSES = ["bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope", "tire"]


def index(root: Path, classes: list[str] | None = None) -> dict:
    idx = Index(root, "mvtec3d", classes)
    for folder in sorted(p for p in idx.root.iterdir() if (p / "test").is_dir()):
        for split in ("train", "test"):
            if not (folder / split).is_dir():
                continue
            for label in sorted(p for p in (folder / split).iterdir() if p.is_dir()):
                anomaly = int(label.name != "good")
                if split == "train" and anomaly:
                    continue
                for image in images_in(label / "rgb") if (label / "rgb").is_dir() else []:
                    mask = label / "gt" / image.name
                    if anomaly and not mask.is_file():
                        idx.skip("anomalous images without a gt/ mask", cls=folder.name)
                        continue
                    idx.add(split, folder.name, image, anomaly, mask if anomaly else None, label.name)
        idx.skip("xyz/ point clouds", sum(count_images(xyz) for xyz in folder.glob("*/*/xyz")), cls=folder.name)
        idx.skip("validation/ images", sum(count_images(rgb) for rgb in folder.glob("validation/*/rgb")),
                 cls=folder.name)
    return idx.meta()
