"""Tiny files for replicas of dataset layouts: random images and masks painted in a box."""
from pathlib import Path

import cv2
import numpy as np

H, W = 40, 48
BOX = (slice(9, 27), slice(13, 35))  # edges off the 8×8 JPEG grid, so JPEG rings around them
rng = np.random.default_rng(0)


def image(path: Path, size: tuple[int, int] = (H, W)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    return path


def mask(path: Path, box: tuple[slice, slice] | None = BOX, value: int = 255, channels: int = 1) -> Path:
    """A mask painted ``value`` in ``box`` (empty for None); JPEG files at quality 90."""
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((H, W), np.uint8)
    if box is not None:
        m[box] = value
    if channels == 3:
        m = np.repeat(m[..., None], 3, axis=-1)
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    assert cv2.imwrite(str(path), m, [cv2.IMWRITE_JPEG_QUALITY, 90] if jpeg else [])
    return path


def painted() -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[BOX] = True
    return m


def replicas(root):
    """Three datasets as they are downloaded: industrial (KolektorSDD2), medical with image
    labels only (HeadCT), medical with every image anomalous (Kvasir-SEG, JPEG masks)."""
    for split, normal, defective in (("train", 2, 1), ("test", 3, 3)):
        for i in range(normal + defective):
            image(root / "ksdd2" / split / f"{i}.png")
            mask(root / "ksdd2" / split / f"{i}_GT.png", BOX if i >= normal else None)
    for i in range(6):
        image(root / "headct" / "head_ct" / "head_ct" / f"{i:03d}.png")
    (root / "headct" / "labels.csv").write_text("id, hemorrhage\n" + "".join(f"{i},{int(i < 3)}\n" for i in range(6)))
    for i in range(4):
        image(root / "kvasir" / "Kvasir-SEG" / "images" / f"c{i}.jpg")
        mask(root / "kvasir" / "Kvasir-SEG" / "masks" / f"c{i}.jpg")
    return root
