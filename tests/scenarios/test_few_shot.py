"""Few-shot reference banks: nearest neighbours against a loop, leave-one-out calibration, saved banks,
test.py --k_shot and predict.py --reference."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import settings, train_small
from PIL import Image

from dhrclip import DHRCLIP, EvalConfig, cli, evaluate
from dhrclip.data.synthetic import synthetic_image
from dhrclip.errors import UserError


def test_k_shot_4_beats_zero_shot_and_records_its_draws(with_train_split, clip_file, tmp_path):
    train_root, test_root = with_train_split
    train_small(train_root, tmp_path / "ckpt", clip_file, epochs=3)
    model = DHRCLIP.from_checkpoint(tmp_path / "ckpt" / "epoch_3.pth", device="cpu")
    common = dict(data_path=test_root, batch_size=4, num_workers=0)
    zero = evaluate(model, settings(EvalConfig, save_path=tmp_path / "zero", **common))
    few = evaluate(model, settings(EvalConfig, save_path=tmp_path / "few", k_shot=4, k_shot_runs=2, **common))
    assert few["mean"]["pixel_auroc"] > zero["mean"]["pixel_auroc"]  # 61.9 vs 52.5 measured
    runs = few["k_shot"]["runs"]
    assert [r["seed"] for r in runs] == [111, 112] and len(runs[0]["references"]["ring"]) == 4
    assert all("/train/good/" in path for path in runs[0]["references"]["ring"])
    assert few["k_shot"]["std"]["pixel_auroc"] is not None
    assert "±" in (tmp_path / "few" / "log.txt").read_text()




def test_predict_with_reference_and_leave_one_out_calibration_end_to_end(checkpoint, goods, tmp_path, clip_file):
    parts = tmp_path / "parts"
    parts.mkdir()
    rng = np.random.default_rng(9)
    for k in range(3):
        Image.fromarray(synthetic_image("disk", 80, 100, rng)).save(parts / f"part_{k}.png")
    common = ["--checkpoint_path", str(checkpoint), "--input", str(parts), "--calibrate_on", str(goods[0].parent),
              "--grid", "fixed", "--num_workers", "0", "--device", "cpu"]
    cli.predict_main([*common, "--save_path", str(tmp_path / "few"), "--reference", str(goods[0].parent),
                      "--save_reference", str(tmp_path / "bank.safetensors")])
    cli.predict_main([*common, "--save_path", str(tmp_path / "zero")])
    with open(tmp_path / "few" / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and all(r["decision"] in ("normal", "anomalous") for r in rows)
    few = DHRCLIP.from_checkpoint(checkpoint, device="cpu").with_reference(tmp_path / "bank.safetensors",
                                                                            grid="fixed")
    for row in rows:  # the CSV and the saved maps are the combined (zero-shot + few-shot) ones
        expected = few.predict(row["path"], grid="fixed")
        assert float(row["image_score"]) == pytest.approx(expected.score, abs=1e-5)
        saved = np.load(tmp_path / "few" / "maps" / (row["path"].rsplit("/", 1)[1].replace(".", "_") + ".npy"))
        assert np.allclose(saved, expected.anomaly_map, atol=2e-3)
    zero_rows = list(csv.DictReader(open(tmp_path / "zero" / "predictions.csv")))
    assert [r["map_max"] for r in rows] != [r["map_max"] for r in zero_rows]
    threshold = json.loads((tmp_path / "few" / "threshold.json").read_text())
    assert threshold["leave_one_out"] and threshold["reference"] == few.reference.digest()
    assert len(list((tmp_path / "few" / "figures").glob("*.png"))) == 3
    # thresholds made with the bank are refused without it
    with pytest.raises(SystemExit):
        cli.predict_main(["--checkpoint_path", str(checkpoint), "--input", str(parts), "--grid", "fixed",
                          "--threshold_file", str(tmp_path / "few" / "threshold.json"), "--save_path",
                          str(tmp_path / "again"), "--device", "cpu"])


def test_auto_banks_leave_padding_out_and_an_image_matches_itself_everywhere(checkpoint, goods):
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    few = model.with_reference(goods[:1], grid="auto")
    # an 80x100 image on 2x2 tiles of 70 px: placed at scale 1.4 as 112x140 from row 14, so the first
    # token row of the top tiles and the last of the bottom ones (centres at 7 and 133) are padding
    assert len(few.reference.global_owner) == 16 and len(few.reference.tile_owner) == 4 * 25 - 20
    itself = few.predict(goods[0], grid="auto")
    alone = model.predict(goods[0], grid="auto")
    assert np.abs(itself.anomaly_map - alone.anomaly_map).max() < 1e-4  # few-shot distance 0 everywhere
    with pytest.raises(UserError, match="grid"):
        few.predict(goods[0], grid="fixed")  # a bank answers only for the views it was built from


