"""KolektorSDD2 (surface defects): an image is anomalous when its mask is not empty.

    train/10000.png, train/10000_GT.png     every image has a ``_GT`` mask, empty when normal
    test/20000.png,  test/20000_GT.png

Labels come from the masks alone, so each mask is read while indexing. The
train split holds ``train/``'s normal images; its defective ones are left out
(counted), as zero-shot testing uses ``test/``. One class,
``ksdd2``.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..indexing import Index, images_in, mask_threshold_for
from ..images import load_mask

CLASS = "ksdd2"


def index(root: Path, classes: list[str] | None = None) -> dict:
    root = Path(root)
    idx = Index(root, "ksdd2", classes)
    if not (root / "test").is_dir():
        raise UserError(f"{root} has no test/ folder: the KolektorSDD2 root holds train/ and test/")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            continue
        files = images_in(root / split)
        masks = {f.stem.removesuffix("_GT"): f for f in files if f.stem.endswith("_GT")}
        for image in (f for f in files if not f.stem.endswith("_GT")):
            mask = masks.get(image.stem)
            if mask is None:
                idx.skip(f"images in {split}/ without a _GT mask")
                continue
            anomalous = bool(load_mask(mask, mask_threshold_for(mask)).any())
            if split == "train" and anomalous:
                idx.skip("defective images of train/ (the train split holds normal images)")
            elif anomalous:
                idx.add(split, CLASS, image, 1, mask, "defect", mask_threshold_for(mask))
            else:
                idx.add(split, CLASS, image, 0, specie="good")
    return idx.meta()
