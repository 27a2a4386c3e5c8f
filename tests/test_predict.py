"""predict.py on your own images, thresholds and calibration, custom dataset indexes."""
import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import RUNTIME, train_small
from dhrclip import DHRCLIP, EvalConfig, PredictConfig, cli, evaluate, predict
from dhrclip.errors import UserError
from dhrclip.data.indexing import csv_index, folder_index, write_meta
from dhrclip.engine.prediction import decide
from dhrclip.data.synthetic import paint_defect, synthetic_image


def predict_cli(*argv):
    """predict.py's command line; returns the rows of predictions.json."""
    cli.predict_main([*argv, *RUNTIME])
    save_path = argv[list(argv).index("--save_path") + 1]
    return json.loads((Path(save_path) / "predictions.json").read_text())["predictions"]


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


def test_decision_rule():
    assert decide(0.9, 0.1, 0.5, None) == "anomalous"
    assert decide(0.1, 2.0, 0.5, 1.0) == "anomalous"
    assert decide(0.1, 0.5, 0.5, 1.0) == "normal"
    assert decide(0.1, 0.5, None, None) == ""


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
    rows = predict(model, PredictConfig(**common, save_path=tmp_path / "out", calibrate_on=str(tmp_path / "good")))
    decisions = {r["path"].rsplit("/", 1)[-1]: r["decision"] for r in rows}
    assert decisions == {"bad.png": "anomalous", "good.png": "normal"}
    saved = json.loads((tmp_path / "out" / "threshold.json").read_text())
    assert saved["calibration_images"] == 4 and saved["rule"].startswith("quantile 1.0")
    again = predict(model, PredictConfig(**common, save_path=tmp_path / "again",
                                         threshold_file=tmp_path / "out" / "threshold.json"))
    assert [r["decision"] for r in again] == [r["decision"] for r in rows]


def write_custom_layout(root, with_masks):
    rng = np.random.default_rng(3)
    for folder in ("good", "crack"):
        (root / folder).mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(root / "good" / f"g{i}.png"), synthetic_image("waves", 48, 64, rng)[..., ::-1])
        bad, mask = paint_defect(synthetic_image("waves", 48, 64, rng), "blob", rng)
        cv2.imwrite(str(root / "crack" / f"c{i}.png"), bad[..., ::-1])
        if with_masks:
            (root / "ground_truth" / "crack").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "ground_truth" / "crack" / f"c{i}.png"), mask.astype(np.uint8) * 255)


@pytest.mark.parametrize("with_masks", [True, False])
def test_folder_layout_index_is_accepted_by_test_py(tmp_path, clip_file, checkpoint, with_masks):
    root = tmp_path / "widgets"
    write_custom_layout(root, with_masks)
    meta = folder_index(root)
    assert list(meta["test"]) == ["widgets"] and len(meta["test"]["widgets"]) == 6
    assert all(bool(r["mask_path"]) == (with_masks and r["anomaly"] == 1) for r in meta["test"]["widgets"])
    write_meta(root, meta)
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    results = evaluate(model, EvalConfig(data_path=root, save_path=tmp_path / "res", batch_size=4, num_workers=0))
    row = results["classes"]["widgets"]
    assert row["image_auroc"] is not None
    assert (row["pixel_auroc"] is not None) == with_masks
    if not with_masks:
        with pytest.raises(UserError, match="needs a mask"):
            train_small(root, tmp_path / "c", clip_file)


def test_csv_index(tmp_path):
    write_custom_layout(tmp_path, with_masks=True)
    (tmp_path / "list.csv").write_text("image,mask,label,class\n"
                                       "good/g0.png,,normal,widget\n"
                                       "crack/c0.png,ground_truth/crack/c0.png,anomaly,widget\n"
                                       "crack/c1.png,,1,gadget\n")
    meta = csv_index(tmp_path, tmp_path / "list.csv")
    assert [r["anomaly"] for r in meta["test"]["widget"]] == [0, 1]
    assert meta["test"]["gadget"][0]["mask_path"] == ""
    (tmp_path / "bad.csv").write_text("image,mask,label,class\nx.png,,maybe,w\n")
    with pytest.raises(UserError, match="bad.csv:2"):
        csv_index(tmp_path, tmp_path / "bad.csv")
