"""MVTec AD 2: 8 classes (can, fabric, fruit_jelly, rice, sheet_metal, vial, wallplugs, walnuts).

    <class>/train/good/000_regular.png                 normal training images
    <class>/validation/good/...                        normal validation images: left out
    <class>/test_public/good/000_regular.png           normal test images (also _overexposed, _shift_1, ...)
    <class>/test_public/bad/000_regular.png            anomalous test images (stems repeat across good/bad)
    <class>/test_public/ground_truth/bad/000_regular_mask.png   their masks, 0/255
    <class>/test_private/, test_private_mixed/         unlabelled benchmark images: left out

Only ``test_public`` has labels, so it is the test split; the private sets are
counted as left out, never indexed. Grayscale images are read as RGB.
"""
from __future__ import annotations

from pathlib import Path

from ..indexing import Index, count_images, find_mask, images_in

CLASSES = ["can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts"]


def index(root: Path, classes: list[str] | None = None) -> dict:
    idx = Index(root, "mvtec_ad2", classes)
    for folder in sorted(p for p in idx.root.iterdir() if (p / "test_public").is_dir()):
        cls = folder.name
        for image in images_in(folder / "train" / "good") if (folder / "train" / "good").is_dir() else []:
            idx.add("train", cls, image, 0, specie="good")
        public = folder / "test_public"
        for label in sorted(p for p in public.iterdir() if p.is_dir() and p.name != "ground_truth"):
            anomaly = int(label.name != "good")
            for image in images_in(label):
                mask = find_mask(public / "ground_truth" / label.name, image) if anomaly else None
                if anomaly and mask is None:
                    idx.skip("anomalous test_public images without a mask", cls=cls)
                    continue
                idx.add("test", cls, image, anomaly, mask, label.name)
        for unused in ("validation", "test_private", "test_private_mixed"):
            idx.skip(f"{unused}/ images" + (" (unlabelled)" if "private" in unused else ""),
                     count_images(folder / unused), cls=cls)
    return idx.meta()
