"""Reading image files the way every path of the project does, with numpy and Pillow only (no
torch, so the ONNX runtime in ``deploy`` can use it): any mode, EXIF orientation, 16-bit depths."""
from __future__ import annotations

import glob
import logging
import os
import re
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def _open(path: Path, what: str, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode an image, upright per its EXIF orientation; one of more than
    ``max_pixels`` pixels is refused from its header, before anything is decoded."""
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        with Image.open(path) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise UserError(f"{what} {path} is {img.width}x{img.height} ({img.width * img.height / 1e6:.3g} "
                                f"megapixels), over the limit of max_megapixels {max_pixels / 1e6:g}",
                                field="max_megapixels")
            if getattr(img, "n_frames", 1) > 1:
                log.warning("%s %s has %d frames; its first is used", what, path, img.n_frames)
            img.load()
            return ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{what} {path} is unreadable or truncated ({exc})") from exc


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation an opened image declares in its header. Pillow's ``getexif`` of a PNG
    decodes the whole image to look for an eXIf chunk after the pixels; here a PNG's orientation is
    read from a chunk before them only (where cameras and editors put it), so nothing is decoded."""
    if img.format == "PNG":
        raw = img.info.get("exif")
        exif = Image.Exif()
        if isinstance(raw, bytes):
            exif.load(raw)
        return int(exif.get(0x0112, 1))
    return int(img.getexif().get(0x0112, 1))


def image_shape(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, upright per its EXIF orientation, from its header alone."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if _orientation(img) in (5, 6, 7, 8):  # rotated by 90 degrees one way or the other
                width, height = height, width
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"image {path} is unreadable or truncated ({exc})") from exc
    return height, width


_INFERRED_BITS: set[int] = set()  # depths already reported, so each is logged once


def png_significant_bits(path: Path) -> int | None:
    """The significant bits a PNG declares in its sBIT chunk (e.g. 12 for Mono12 cameras), if any."""
    try:
        with open(path, "rb") as handle:
            if handle.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            while True:
                head = handle.read(8)
                if len(head) < 8:
                    return None
                length, kind = struct.unpack(">I4s", head)
                if kind == b"sBIT":
                    return max(handle.read(length)[:3]) or None
                if kind in (b"IDAT", b"IEND"):
                    return None
                handle.seek(length + 4, os.SEEK_CUR)
    except (OSError, struct.error, ValueError):
        return None


def _high_bit_depth_to_uint8(img: Image.Image, bits: int | None = None) -> np.ndarray:
    """Scale a 16-bit or 32-bit single-channel image to 8 bits by its real range.

    Integer images use ``bits`` significant bits when known (given, or a PNG's
    sBIT chunk) and the data fit them, else the observed maximum rounded up to
    8, 10, 12, 14 or 16 bits: a 12-bit camera frame stored as 16-bit PNG is not
    divided by 65,535. (Pillow reads 16-bit colour images as 8-bit RGB already.)
    """
    arr = np.asarray(img, dtype=np.float64)
    peak = arr.max()
    if img.mode == "F" and peak <= 1.0:
        top = 1.0  # float images in [0, 1]
    elif img.mode.startswith("I;16") or peak > 255:
        if not bits or not 1 <= bits <= 16 or peak >= 2 ** bits:  # a declared depth the data contradicts
            bits = next(b for b in (8, 10, 12, 14, 16) if peak < 2 ** b or b == 16)
            if bits not in _INFERRED_BITS:
                _INFERRED_BITS.add(bits)
                log.info("a 16-bit image with maximum %d is read as %d-bit; set bit_depth if your camera's "
                         "depth is known", int(peak), bits)
        top = 2.0 ** bits - 1
    else:
        top = 255.0
    return np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


def load_rgb(path: Path, bit_depth: int | None = None, max_pixels: int | None = None) -> Image.Image:
    """Any reasonable image file as 8-bit RGB: grayscale, palette, RGBA, 16-bit, CMYK, EXIF-rotated.

    ``bit_depth``: significant bits of 16-bit images (default: the PNG's sBIT
    chunk, else inferred from the image's maximum); ``max_pixels``: a larger image is refused
    before it is decoded."""
    return to_rgb(_open(path, "image", max_pixels), bit_depth or png_significant_bits(path))


ImageSource = str | Path | Image.Image | np.ndarray


def image_from_source(source: ImageSource, bit_depth: int | None = None, max_pixels: int | None = None
                      ) -> Image.Image:
    """A path, a PIL image or an (H, W) / (H, W, 3|4) uint8 array as 8-bit RGB; files and
    PIL images upright per their EXIF orientation."""
    if isinstance(source, (str, Path)):
        if Path(source).is_dir():
            raise UserError(f"{source} is a folder: give image files (predict.py and collect_images "
                            f"take folders)")
        return load_rgb(Path(source), bit_depth, max_pixels)
    if isinstance(source, Image.Image):
        return to_rgb(ImageOps.exif_transpose(source), bit_depth)
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or not (source.ndim == 2 or (source.ndim == 3 and source.shape[2] in (3, 4))):
            raise UserError(f"an image array must be uint8 of shape (H, W), (H, W, 3) or (H, W, 4); got "
                            f"{source.dtype} {source.shape}")
        return to_rgb(Image.fromarray(source))
    raise UserError(f"cannot read an image from a {type(source).__name__}: give a path, a PIL image or a uint8 array")


def to_rgb(img: Image.Image, bit_depth: int | None = None) -> Image.Image:
    """An opened image in any mode as 8-bit RGB (alpha composited on black)."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        img = Image.fromarray(_high_bit_depth_to_uint8(img, bit_depth), mode="L")
    elif img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (0, 0, 0))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def canvas_array(img: Image.Image, size: int | tuple[int, int]) -> np.ndarray:
    """Bicubic resize to size × size (or (height, width)), as a uint8 (3, H, W) array: the canvas
    of the PyTorch path and of the ONNX runtime alike."""
    h, w = (size, size) if isinstance(size, int) else size
    return np.asarray(img.resize((w, h), Image.Resampling.BICUBIC), dtype=np.uint8).transpose(2, 0, 1)


def resize_bilinear(amap: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres and edge clamping, the interpolation of
    ``cv2.resize(..., INTER_LINEAR)`` that the PyTorch path uses."""
    def axis(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.maximum((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0.0)
        low = np.minimum(np.floor(pos).astype(np.int64), size_in - 1)
        high = np.minimum(low + 1, size_in - 1)
        return low, high, (pos - low).astype(np.float32)

    y0, y1, fy = axis(amap.shape[0], height)
    x0, x1, fx = axis(amap.shape[1], width)
    top = amap[y0][:, x0] * (1 - fx) + amap[y0][:, x1] * fx
    bottom = amap[y1][:, x0] * (1 - fx) + amap[y1][:, x1] * fx
    return (top * (1 - fy)[:, None] + bottom * fy[:, None]).astype(np.float32)


def load_mask(paths: Path | Sequence[Path], threshold: float = 0, max_pixels: int | None = None) -> np.ndarray:
    """A ground-truth mask as bool (H, W): a pixel is anomalous where its largest channel value
    exceeds ``threshold`` in any of ``paths`` (several files are read as their union). The
    threshold belongs to the index: 0 for lossless masks, about half the range for JPEG masks,
    whose compression noise would otherwise count as defect. ``max_pixels`` as in ``load_rgb``."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    union: np.ndarray | None = None
    for path in paths:
        img = _open(Path(path), "mask", max_pixels)
        if img.mode == "P":
            img = img.convert("RGB")
        elif img.mode == "1":  # bilevel: as 0/255, so that any threshold keeps what is marked
            img = img.convert("L")
        arr = np.asarray(img)
        if arr.ndim == 3:
            arr = arr[..., :3].max(axis=-1) if arr.shape[-1] != 2 else arr[..., 0]
        mask = arr > threshold
        if union is not None and union.shape != mask.shape:
            raise UserError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]}, but {paths[0]} of the same image is "
                            f"{union.shape[1]}x{union.shape[0]}")
        union = mask if union is None else union | mask
    if union is None:
        raise UserError("load_mask needs at least one mask file")
    return union


def collect_images(spec: str, exclude: Path | None = None, field: str = "input") -> tuple[list[Path], Path]:
    """Image files named by a file, a folder (recursive) or a glob, and the folder they share;
    nothing inside ``exclude`` (the output folder) is taken. Links to folders are followed, but
    never into a folder already walked, so a link back up cannot loop; a file reached twice (by a
    link) is listed once. ``field``: the setting that named them."""
    path = Path(spec).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in _walk(path) if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        files = sorted(p for p in _matches(os.path.expanduser(spec)) if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files and not glob.has_magic(spec):
            raise UserError(f"{field} {spec}: no such file or folder", field=field)
    files = _once(files)
    found = len(files)
    if exclude is not None:
        outside = Path(exclude).resolve()
        files = [f for f in files if not f.resolve().is_relative_to(outside)]
    if not files:
        inside = f" ({found} left out: they are inside the output folder {exclude})" if found else ""
        raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found at {spec}{inside}", field=field)
    base = path if path.is_dir() else Path(os.path.commonpath([f.parent for f in files]))
    return files, base


def _walk(root: Path) -> Iterator[Path]:
    """Every file below ``root``, links to folders followed but never into a folder already walked."""
    seen: set[tuple[int, int]] = set()
    for folder, folders, names in os.walk(root, followlinks=True):
        status = os.stat(folder)
        if (status.st_dev, status.st_ino) in seen:
            folders[:] = []
            continue
        seen.add((status.st_dev, status.st_ino))
        folders.sort()
        yield from (Path(folder) / name for name in sorted(names))


def _matches(pattern: str) -> Iterator[Path]:
    """The files a glob pattern (``**`` for any depth) names, found by ``_walk`` from the pattern's
    fixed part."""
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    base = Path(*parts[:fixed]) if fixed else Path(".")
    if not base.is_dir():
        return
    pieces = [_component(part) for part in parts[fixed:]]
    if parts[-1] == "**":  # everything below
        pieces[-1] = ".*"
    regex = re.compile("/".join(pieces).replace("(?:[^/]+/)*/", "(?:[^/]+/)*"))
    for file in _walk(base):
        if regex.fullmatch(file.relative_to(base).as_posix()):
            yield file


def _component(part: str) -> str:
    """One path component of a glob as a regular expression that stays within the component."""
    if part == "**":
        return "(?:[^/]+/)*"
    out, i = "", 0
    while i < len(part):
        ch = part[i]
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[" and "]" in part[i + 2:]:
            end = part.index("]", i + 2)
            body = part[i + 1:end].replace("\\", "\\\\")
            out += "[" + ("^" + body[1:] if body.startswith("!") else body) + "]"
            i = end
        else:
            out += re.escape(ch)
        i += 1
    return out


def _once(files: list[Path]) -> list[Path]:
    """``files`` without a second path to a file already listed (through a link)."""
    seen: set[Path] = set()
    unique = []
    for file in files:
        real = file.resolve()
        if real not in seen:
            seen.add(real)
            unique.append(file)
    return unique
