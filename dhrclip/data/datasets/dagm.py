"""DAGM 2007 (weakly labelled textures): 10 classes, Class1 ... Class10.

    Class1/Train/0576.PNG                  images; Train and Test both hold defective ones
    Class1/Train/Label/0576_label.PNG      a mask for each defective image (an ellipse)
    Class1/Train/Label/Labels.txt          the same labels as a table: not needed
    Class1/Test/..., Class1/Test/Label/...

An image is anomalous when it has a ``_label`` mask. The train split holds
``Train/``'s normal images; its defective ones are left out (counted). A
``Class1/Class1/`` nesting is read too.
"""
from __future__ import annotations

from pathlib import Path

from ..indexing import Index, suffixed_masks


def index(root: Path, classes: list[str] | None = None) -> dict:
    idx = Index(root, "dagm", classes)
    for folder in sorted(p for p in idx.root.iterdir() if p.is_dir() and p.name.startswith("Class")):
        cls = folder.name
        if (folder / cls).is_dir() and not (folder / "Test").is_dir():  # Class1/Class1/
            folder = folder / cls
        for phase, split in (("Train", "train"), ("Test", "test")):
            if not (folder / phase).is_dir():
                continue
            for image, mask in suffixed_masks(folder / phase, "_label", folder / phase / "Label"):
                if mask is not None and split == "train":
                    idx.skip("defective images of Train/ (the train split holds normal images)", cls=cls)
                elif mask is not None:
                    idx.add(split, cls, image, 1, mask, "defect")
                else:
                    idx.add(split, cls, image, 0, specie="good")
    return idx.meta()
