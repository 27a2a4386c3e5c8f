"""meta.json generators for the dataset layouts, and the demo that uses them."""
import json
import shlex
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import ROOT, settings, train_small, write_custom_layout

from dhrclip import DHRCLIP, EvalConfig, evaluate
from dhrclip.data.indexing import csv_index, folder_index, mvtec_layout_index, visa_index, write_meta
from dhrclip.data.meta import read_meta
from dhrclip.data.synthetic import synthetic_image
from dhrclip.errors import UserError


def test_visa_csv_index(tmp_path):
    for rel in ("candle/Data/Images/Normal/0.JPG", "candle/Data/Images/Anomaly/1.JPG",
                "candle/Data/Masks/Anomaly/1.png", "pcb1/Data/Images/Normal/2.JPG"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / rel), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "split_csv").mkdir()
    (tmp_path / "split_csv" / "1cls.csv").write_text(
        "object,split,label,image,mask\n"
        "candle,train,normal,candle/Data/Images/Normal/0.JPG,\n"
        "candle,test,anomaly,candle/Data/Images/Anomaly/1.JPG,candle/Data/Masks/Anomaly/1.png\n"
        "pcb1,test,normal,pcb1/Data/Images/Normal/2.JPG,\n")
    meta = visa_index(tmp_path)
    assert list(meta["train"]) == ["candle"] and sorted(meta["test"]) == ["candle", "pcb1"]
    assert meta["test"]["candle"][0] == {"img_path": "candle/Data/Images/Anomaly/1.JPG",
                                         "mask_path": "candle/Data/Masks/Anomaly/1.png", "cls_name": "candle",
                                         "specie_name": "", "anomaly": 1}
    assert visa_index(tmp_path, ["pcb1"])["test"].keys() == {"pcb1"}
    with pytest.raises(UserError, match="split_csv/1cls.csv not found"):
        visa_index(tmp_path / "candle")


def test_btad_style_ok_folders_and_same_name_masks(tmp_path):
    for rel in ("01/train/ok/0000.bmp", "01/test/ok/0001.bmp", "01/test/ko/0002.bmp"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / rel), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "01/ground_truth/ko").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "01/ground_truth/ko/0002.png"), np.zeros((8, 8), np.uint8))
    meta = mvtec_layout_index(tmp_path)
    rows = {r["img_path"]: r for r in meta["test"]["01"]}
    assert rows["01/test/ok/0001.bmp"]["anomaly"] == 0
    assert rows["01/test/ko/0002.bmp"]["mask_path"] == "01/ground_truth/ko/0002.png"
    assert [r["img_path"] for r in meta["train"]["01"]] == ["01/train/ok/0000.bmp"]


def test_generator_script_writes_a_meta_json_read_meta_accepts(source_data, tmp_path):
    root = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(source_data), str(root)], check=True)
    (root / "meta.json").unlink()
    subprocess.run([sys.executable, "generate_dataset_json/mvtec.py", "--root", str(root), "--classes", "disk"],
                   cwd=ROOT, check=True, capture_output=True)
    assert list(json.loads((root / "meta.json").read_text())["test"]) == ["disk"]
    assert len(read_meta(root, "test")["disk"]) == 7


def test_demo_shows_the_prompts_learning_at_its_own_settings(tmp_path):
    """The README's first command: untrained and trained tables on held-out classes, figures, the next step."""
    proc = subprocess.run([sys.executable, "demo.py", "--pretrained", "none", "--save_path", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RANDOMLY INITIALISED CLIP" in proc.stdout and proc.stdout.count("| mean") == 2
    untrained = json.loads((tmp_path / "results_untrained" / "results.json").read_text())["mean"]["pixel_auroc"]
    trained = json.loads((tmp_path / "results" / "results.json").read_text())
    assert sorted(trained["classes"]) == ["checker", "pill", "ring", "waves"]
    assert trained["mean"]["pixel_auroc"] >= 0.90 and trained["mean"]["pixel_auroc"] - untrained >= 0.30
    assert len(list((tmp_path / "results" / "vis").rglob("*.png"))) == 40
    last = proc.stdout.strip().splitlines()[-1].strip()  # how to go on: no model flags needed
    assert last == f"{shlex.quote(sys.executable)} predict.py --checkpoint_path " \
                   f"{shlex.quote(str(tmp_path / 'checkpoint' / 'epoch_15.pth'))} --input YOUR_IMAGES/ " \
                   f"--save_path predictions/"


@pytest.mark.parametrize("with_masks", [True, False])
def test_folder_layout_index_is_accepted_by_test_py(tmp_path, clip_file, checkpoint, with_masks):
    root = tmp_path / "widgets"
    write_custom_layout(root, with_masks)
    meta = folder_index(root)
    assert list(meta["test"]) == ["widgets"] and len(meta["test"]["widgets"]) == 6
    assert all(bool(r["mask_path"]) == (with_masks and r["anomaly"] == 1) for r in meta["test"]["widgets"])
    write_meta(root, meta)
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    results = evaluate(model, settings(EvalConfig, data_path=root, save_path=tmp_path / "res", batch_size=4,
                                       num_workers=0))
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


def test_a_folder_or_csv_index_with_training_images_serves_k_shot(tmp_path, checkpoint):
    """train/good/ (or --train_good, or a CSV split column) fills the train split, so test.py --k_shot
    runs on your own folders; anomalous training rows and a second class with --train_good are refused."""
    import json

    from dhrclip import cli

    root = tmp_path / "widgets"
    write_custom_layout(root, with_masks=True)
    rng = np.random.default_rng(5)
    (root / "train" / "good").mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(root / "train" / "good" / f"t{i}.png"), synthetic_image("waves", 48, 64, rng)[..., ::-1])
    meta = folder_index(root)
    assert [r["img_path"] for r in meta["train"]["widgets"]] == [f"train/good/t{i}.png" for i in range(3)]
    assert all(not r["img_path"].startswith("train/") for r in meta["test"]["widgets"])
    write_meta(root, meta)
    cli.test_main(["--data_path", str(root), "--checkpoint_path", str(checkpoint), "--save_path",
                   str(tmp_path / "res"), "--k_shot", "2", "--num_workers", "0", "--device", "cpu"])
    results = json.loads((tmp_path / "res" / "results.json").read_text())
    assert len(results["k_shot"]["runs"][0]["references"]["widgets"]) == 2
    assert results["classes"]["widgets"]["pixel_auroc"] is not None

    extra = tmp_path / "more_good"
    shutil.copytree(root / "train" / "good", extra)
    assert len(folder_index(root, train_good=extra)["train"]["widgets"]) == 6
    (tmp_path / "list.csv").write_text("image,mask,label,class,split\n"
                                       "good/g0.png,,normal,w,\n"
                                       "crack/c0.png,ground_truth/crack/c0.png,anomaly,w,test\n"
                                       "train/good/t0.png,,0,w,train\n")
    table = csv_index(root, tmp_path / "list.csv")
    assert [r["img_path"] for r in table["train"]["w"]] == ["train/good/t0.png"] and len(table["test"]["w"]) == 2
    (tmp_path / "bad.csv").write_text("image,mask,label,class,split\ncrack/c0.png,,1,w,train\n")
    with pytest.raises(UserError, match="normal images only"):
        csv_index(root, tmp_path / "bad.csv")
    two = tmp_path / "two"
    for name in ("a", "b"):
        write_custom_layout(two / name, with_masks=False)
    with pytest.raises(UserError, match="one class") as info:
        folder_index(two, train_good=extra)
    assert info.value.field == "train_good"
