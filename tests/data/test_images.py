"""Reading images and masks in any mode, bit depth and orientation."""
import struct
import zlib

import numpy as np
import pytest
from conftest import odd_variants
from PIL import Image

from dhrclip.data.images import load_mask, load_rgb


def test_odd_images_load_as_rgb_of_the_shown_shape(tmp_path):
    for name, shape in odd_variants(tmp_path).items():
        img = load_rgb(tmp_path / name)
        assert img.mode == "RGB" and (img.height, img.width) == shape, name
    gray = np.asarray(load_rgb(tmp_path / "gray.png"))
    for name in ("sixteen.png", "float.tif", "unit_float.tif"):  # same picture at another bit depth
        assert np.abs(np.asarray(load_rgb(tmp_path / name)).astype(int) - gray).max() <= 1, name


def test_masks_in_any_mode_mark_non_zero_pixels(tmp_path):
    base = np.zeros((6, 8), np.uint8)
    base[1:3, 2:5] = 1
    variants = {
        "l.png": Image.fromarray(base * 255),
        "one.png": Image.fromarray(base),
        "rgb.png": Image.fromarray(np.stack([base * 0, base * 200, base * 0], -1)),
        "rgba.png": Image.fromarray(np.stack([base * 255] * 3 + [np.full_like(base, 255)], -1)),
        "sixteen.png": Image.fromarray(base.astype(np.uint16) * 65535),
        "bilevel.png": Image.fromarray(base.astype(bool)),
        "palette.png": Image.fromarray(base * 255).convert("P"),
    }
    for name, img in variants.items():
        img.save(tmp_path / name)
        assert np.array_equal(load_mask(tmp_path / name), base.astype(bool)), name


def _png_with_sbit(path, array, bits):
    """A 16-bit grayscale PNG carrying an sBIT chunk (as Mono12 cameras write)."""
    Image.fromarray(array).save(path)
    data = path.read_bytes()
    chunk = b"sBIT" + bytes([bits])
    sbit = struct.pack(">I", 1) + chunk + struct.pack(">I", zlib.crc32(chunk))
    ihdr_end = 8 + 8 + 13 + 4
    path.write_bytes(data[:ihdr_end] + sbit + data[ihdr_end:])


def test_sixteen_bit_images_use_their_real_range(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, (20, 30))
    twelve = (gray * 4095 // 255).astype(np.uint16)         # a 12-bit frame in a 16-bit PNG
    Image.fromarray(twelve).save(tmp_path / "inferred.png")
    reference = gray.astype(int)
    assert np.abs(np.asarray(load_rgb(tmp_path / "inferred.png"))[..., 0] - reference).max() <= 1
    dark = twelve // 4                                      # a dark 12-bit frame: max about 1023
    _png_with_sbit(tmp_path / "sbit.png", dark, 12)
    assert np.abs(np.asarray(load_rgb(tmp_path / "sbit.png"))[..., 0] - reference // 4).max() <= 1
    assert np.abs(np.asarray(load_rgb(tmp_path / "sbit.png", bit_depth=10))[..., 0] - reference).max() <= 2
    Image.fromarray((gray * 257).astype(np.uint16)).save(tmp_path / "full.png")  # full 16-bit range
    assert np.abs(np.asarray(load_rgb(tmp_path / "full.png"))[..., 0] - reference).max() <= 1


def test_a_declared_depth_the_data_contradict_is_not_trusted_and_bombs_are_unreadable(tmp_path):
    from dhrclip.errors import UserError
    gray = np.random.default_rng(1).integers(0, 256, (20, 30))
    _png_with_sbit(tmp_path / "conformant.png", (gray * 257).astype(np.uint16), 12)  # scaled to 16 bits, per spec
    assert np.abs(np.asarray(load_rgb(tmp_path / "conformant.png"))[..., 0] - gray).max() <= 1
    header = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0,
                                                                                    0, 0)
    (tmp_path / "bomb.png").write_bytes(header + struct.pack(">I", zlib.crc32(header[12:])))
    with pytest.raises(UserError, match="unreadable or truncated"):
        load_rgb(tmp_path / "bomb.png")


def test_image_shape_reads_headers_only(tmp_path, monkeypatch):
    """The size check of the page and of training's grid groups decodes no pixels, also of a PNG
    (whose EXIF Pillow would look for after the pixels by decoding them all)."""
    from PIL import PngImagePlugin

    from dhrclip.data.images import image_shape

    Image.fromarray(np.zeros((300, 400), np.uint8)).save(tmp_path / "plain.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated by 90 degrees
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "turned.png", exif=exif)
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "turned.jpg", exif=exif)

    def decoded(self, *args, **kwargs):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", decoded)
    assert image_shape(tmp_path / "plain.png") == (300, 400)
    assert image_shape(tmp_path / "turned.png") == (40, 30) and image_shape(tmp_path / "turned.jpg") == (40, 30)


def test_links_back_up_a_folder_tree_list_each_image_once_and_end(tmp_path):
    """A folder (or a ``**`` glob) with links to itself and to a parent: each image once, and the
    walk ends (it used to list an image 41 times for one loop, and never end with two)."""
    import os

    from dhrclip.data.images import collect_images

    root = tmp_path / "parts"
    (root / "a" / "b").mkdir(parents=True)
    for name in ("a/x.png", "a/b/y.png", "a/b/z.jpg", "top.png"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / name)
    os.symlink(root, root / "a" / "b" / "up")
    os.symlink(root / "a", root / "a" / "again")
    names = ["a/b/y.png", "a/b/z.jpg", "a/x.png", "top.png"]
    assert [p.relative_to(root).as_posix() for p in collect_images(str(root))[0]] == names
    assert [p.relative_to(root).as_posix() for p in collect_images(f"{root}/**/*.png")[0]] == \
        ["a/b/y.png", "a/x.png", "top.png"]
    assert [p.name for p in collect_images(f"{root}/*/b/?.jpg")[0]] == ["z.jpg"]


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path, monkeypatch):
    from PIL import PngImagePlugin

    from dhrclip.errors import UserError

    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(tmp_path / "big.png")
    Image.fromarray(np.zeros((300, 400), np.uint8)).save(tmp_path / "mask.png")
    assert load_rgb(tmp_path / "big.png", max_pixels=120_000).size == (400, 300)  # at the limit: read

    def decoded(self, *args, **kwargs):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", decoded)
    with pytest.raises(UserError, match=r"big.png is 400x300 \(0.12 megapixels\), over the limit of "
                                        r"max_megapixels 0.119") as caught:
        load_rgb(tmp_path / "big.png", max_pixels=119_999)
    assert caught.value.field == "max_megapixels"
    with pytest.raises(UserError, match="mask .*mask.png is 400x300"):
        load_mask(tmp_path / "mask.png", max_pixels=119_999)


@pytest.mark.parametrize("name", ["moving.png", "pages.tif"])
def test_an_image_of_several_frames_is_read_from_its_first_with_a_warning(tmp_path, caplog, name):
    frames = [Image.fromarray(np.full((20, 30, 3), value, np.uint8)) for value in (10, 200)]
    frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:])
    with caplog.at_level("WARNING"):
        img = load_rgb(tmp_path / name)
    assert np.asarray(img).max() == 10 and f"{name} has 2 frames; its first is used" in caplog.text
