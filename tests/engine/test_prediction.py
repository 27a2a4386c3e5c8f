"""predict.py on your own images, thresholds and calibration, custom dataset indexes."""
import csv
import json

import cv2
import numpy as np
from conftest import predict_cli, settings, train_small
from PIL import Image

from dhrclip import DHRCLIP, PredictConfig, predict
from dhrclip.data.indexing import folder_index, write_meta
from dhrclip.data.synthetic import synthetic_image


def write_odd_images(folder):
    """PNG, JPEG, grayscale, RGBA, palette, 16-bit, non-square, nested, and a name clash."""
    rng = np.random.default_rng(0)
    (folder / "nested").mkdir(parents=True)
    shapes = {}
    def save(name, img, **kw):
        img.save(folder / name, **kw)
        shapes[name] = (img.height, img.width)
    save("wide.png", Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)))
    save("wide.jpg", Image.fromarray(rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)), quality=90)
    save("nested/gray.png", Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)))
    save("nested/rgba.png", Image.fromarray(rng.integers(0, 255, (30, 70, 4), dtype=np.uint8)))
    save("nested/palette.png", Image.fromarray(rng.integers(0, 255, (33, 33, 3), dtype=np.uint8)).convert("P"))
    save("deep16.png", Image.fromarray(rng.integers(0, 65535, (20, 24), dtype=np.uint16)))
    return shapes


def test_predict_writes_a_figure_a_map_and_a_row_per_image(tmp_path, clip_file, checkpoint):
    shapes = write_odd_images(tmp_path / "in")
    # The checkpoint brings back its settings, the weights file included: no model flags needed.
    rows = predict_cli("--checkpoint_path", str(checkpoint), "--input", str(tmp_path / "in"),
                       "--save_path", str(tmp_path / "out"))
    assert len(rows) == len(shapes)
    for name, shape in shapes.items():
        stem = name.replace(".", "_")
        amap = np.load(tmp_path / "out" / "maps" / f"{stem}.npy")
        assert amap.shape == shape and amap.dtype == np.float16
        figure = cv2.imread(str(tmp_path / "out" / "figures" / f"{stem}.png"))
        assert figure is not None and figure.shape[1] >= 2 * min(shape)
    with open(tmp_path / "out" / "predictions.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(shapes)
    assert set(table[0]) == {"path", "image_score", "map_max", "decision", "rows", "cols", "error"}
    assert all(row["decision"] == "" for row in table)  # no threshold given
    saved = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert len(saved["predictions"]) == len(shapes)


def test_predict_accepts_a_glob_and_a_single_file(tmp_path, clip_file, checkpoint):
    write_odd_images(tmp_path / "in")
    common = ["--checkpoint_path", str(checkpoint), "--pretrained", str(clip_file), "--threshold", "0.5"]
    rows = predict_cli("--input", str(tmp_path / "in" / "*.png"), "--save_path", str(tmp_path / "g"), *common)
    assert sorted(r["path"].rsplit("/", 1)[-1] for r in rows) == ["deep16.png", "wide.png"]
    assert all(r["decision"] in ("normal", "anomalous") for r in rows)
    one = predict_cli("--input", str(tmp_path / "in" / "wide.jpg"), "--save_path", str(tmp_path / "one"), *common)
    assert len(one) == 1




def _defective(img):
    out, h, w = img.copy(), *img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (w // 2, h // 2), h // 3, 1, -1)
    out[mask.astype(bool)] = (255, 0, 0)
    return out, mask


def test_calibration_separates_a_clearly_defective_image(tmp_path, clip_file):
    rng = np.random.default_rng(0)
    root = tmp_path / "train"
    for folder in ("good", "blob", "ground_truth/blob"):
        (root / folder).mkdir(parents=True)
    for i in range(8):
        cv2.imwrite(str(root / "good" / f"{i}.png"), synthetic_image("grain", 64, 64, rng)[..., ::-1])
        bad, mask = _defective(synthetic_image("grain", 64, 64, rng))
        cv2.imwrite(str(root / "blob" / f"{i}.png"), bad[..., ::-1])
        cv2.imwrite(str(root / "ground_truth" / "blob" / f"{i}_mask.png"), mask * 255)
    write_meta(root, folder_index(root))
    for folder in ("good", "query"):
        (tmp_path / folder).mkdir()
    for i in range(4):
        cv2.imwrite(str(tmp_path / "good" / f"{i}.png"), synthetic_image("grain", 64, 64, rng)[..., ::-1])
    cv2.imwrite(str(tmp_path / "query" / "bad.png"), _defective(synthetic_image("grain", 64, 64, rng))[0][..., ::-1])
    cv2.imwrite(str(tmp_path / "query" / "good.png"), synthetic_image("grain", 64, 64, rng)[..., ::-1])
    train_small(root, tmp_path / "ckpt", clip_file, epochs=15, image_loss_weight=1.0)
    model = DHRCLIP.from_checkpoint(tmp_path / "ckpt", device="cpu")
    common = dict(input=str(tmp_path / "query"), batch_size=4, num_workers=0)
    rows = predict(model, settings(PredictConfig, **common, save_path=tmp_path / "out",
                                   calibrate_on=str(tmp_path / "good")))
    decisions = {r["path"].rsplit("/", 1)[-1]: r["decision"] for r in rows}
    assert decisions == {"bad.png": "anomalous", "good.png": "normal"}
    saved = json.loads((tmp_path / "out" / "threshold.json").read_text())
    assert saved["calibration_images"] == 4 and saved["rule"].startswith("quantile 1.0")
    again = predict(model, settings(PredictConfig, **common, save_path=tmp_path / "again",
                                         threshold_file=tmp_path / "out" / "threshold.json"))
    assert [r["decision"] for r in again] == [r["decision"] for r in rows]








def test_an_image_over_max_megapixels_gets_an_error_row_and_the_rest_are_predicted(tmp_path, checkpoint):
    import pytest

    folder = tmp_path / "parts"
    folder.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(synthetic_image("grain", 40, 48, rng)).save(folder / "small.png")      # 1,920 pixels
    Image.fromarray(synthetic_image("grain", 60, 80, rng)).save(folder / "large.png")      # 4,800 pixels
    with pytest.raises(SystemExit) as stopped:
        predict_cli("--checkpoint_path", str(checkpoint), "--input", str(folder), "--save_path", str(tmp_path / "out"),
                    "--max_megapixels", "0.002")
    assert stopped.value.code == 3
    rows = json.loads((tmp_path / "out" / "predictions.json").read_text())["predictions"]
    by_name = {row["path"].rsplit("/", 1)[-1]: row for row in rows}
    assert "over the limit of max_megapixels 0.002" in by_name["large.png"]["error"]
    assert by_name["small.png"]["error"] == "" and by_name["small.png"]["image_score"] is not None
    assert [p.name for p in (tmp_path / "out" / "maps").glob("*.npy")] == ["small_png.npy"]


def test_an_existing_bank_is_replaced_only_with_overwrite(tmp_path, checkpoint, goods):
    import pytest

    from dhrclip.detector.bank import read_bank
    from dhrclip.errors import UserError

    bank = tmp_path / "bank.safetensors"
    bank.write_bytes(b"the bank another run's thresholds were calibrated with")
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    config = dict(input=str(goods[0]), reference=str(goods[0].parent), save_reference=bank, num_workers=0,
                  grid="fixed")
    with pytest.raises(UserError, match="bank.safetensors exists") as info:
        predict(model, settings(PredictConfig, save_path=tmp_path / "first", **config))
    assert info.value.field == "save_reference" and bank.read_bytes().startswith(b"the bank another run's")
    predict(model, settings(PredictConfig, save_path=tmp_path / "second", overwrite=True, **config))
    assert read_bank(bank).images == len(goods)


def test_no_maps_and_no_figures_leave_them_out_and_keep_the_table(tmp_path, checkpoint):
    shapes = write_odd_images(tmp_path / "in")
    full = predict_cli("--checkpoint_path", str(checkpoint), "--input", str(tmp_path / "in"),
                       "--save_path", str(tmp_path / "full"))
    for flags, folders in ((["--no_maps"], {"figures"}), (["--no_figures"], {"maps"}),
                           (["--no_maps", "--no_figures"], set())):
        out = tmp_path / "_".join(flags)
        rows = predict_cli("--checkpoint_path", str(checkpoint), "--input", str(tmp_path / "in"),
                           "--save_path", str(out), *flags)
        assert [r["image_score"] for r in rows] == [r["image_score"] for r in full]
        assert {p.name for p in out.iterdir() if p.is_dir()} == folders  # no scratch maps left behind
        for folder in folders:
            assert len(list((out / folder).rglob("*.*"))) == len(shapes)


def test_files_written_get_the_umasks_permissions(tmp_path, clip_file, source_data, goods):
    """Under umask 022 every file a run writes is 0644, as any new file is (temporary files are
    0600 until they replace their target): checkpoints, banks, maps, tables, figures, thresholds."""
    import os

    old = os.umask(0o022)
    try:
        train_small(source_data, tmp_path / "run", clip_file)
        predict_cli("--checkpoint_path", str(tmp_path / "run"), "--input", str(goods[0].parent),
                    "--save_path", str(tmp_path / "out"), "--reference", str(goods[0].parent),
                    "--save_reference", str(tmp_path / "bank.safetensors"), "--calibrate_on", str(goods[0].parent))
    finally:
        os.umask(old)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    kinds = {p.suffix for p in written}
    assert {".pth", ".safetensors", ".npy", ".csv", ".json", ".png", ".txt"} <= kinds, kinds
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written if p.stat().st_mode & 0o777 != 0o644} == {}
