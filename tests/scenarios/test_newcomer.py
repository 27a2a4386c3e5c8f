"""A new user's runs, through the scripts: bad files, re-runs, figures, bit depth, partial masks, mistakes."""
import csv
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import RUNTIME, SMALL, run_script, settings
from PIL import Image

from dhrclip import DHRCLIP, PredictConfig, cli, predict
from dhrclip.data.indexing import mvtec_layout_index, write_meta
from dhrclip.data.synthetic import synthetic_image, write_mvtec_dataset
from dhrclip.files import save_json


def write_images(folder, count, size=(40, 48), seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(synthetic_image("grain", *size, rng)).save(folder / f"img_{i:02d}.png")




def error_line(proc):
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[-1] if lines else ""


def csv_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_forty_images_with_two_bad_files_give_38_maps_40_rows_and_exit_3(tmp_path, checkpoint):
    images = tmp_path / "parts"
    write_images(images, 38)
    Image.fromarray(synthetic_image("grain", 40, 48, np.random.default_rng(9))).save(images / "img_19b.jpg")
    (images / "img_19b.jpg").write_bytes((images / "img_19b.jpg").read_bytes()[:150])  # truncated, in the middle
    (images / "zz_notes.png").write_text("not an image")                               # sorts last
    proc = run_script("predict.py", "--checkpoint_path", str(checkpoint), "--input", str(images),
                      "--save_path", str(tmp_path / "out"), *RUNTIME, "--num_workers", "2")  # errors from workers
    assert proc.returncode == 3, proc.stderr[-2000:]
    out = tmp_path / "out"
    assert len(list((out / "maps").glob("*.npy"))) == 38 and len(list((out / "figures").glob("*.png"))) == 38
    rows = csv_rows(out / "predictions.csv")
    assert len(rows) == 40 and sorted(Path(r["path"]).name for r in rows if r["error"]) == ["img_19b.jpg",
                                                                                          "zz_notes.png"]
    assert all("unreadable or truncated" in r["error"] for r in rows if r["error"])
    assert len(json.loads((out / "predictions.json").read_text())["predictions"]) == 40
    assert "38 images" in proc.stdout and "2 skipped" in proc.stdout


def test_on_error_stop_ends_with_one_line_and_keeps_the_rows_already_made(tmp_path, checkpoint):
    images = tmp_path / "parts"
    write_images(images, 10)
    (images / "img_05b.png").write_text("not an image")
    proc = run_script("predict.py", "--checkpoint_path", str(checkpoint), "--input", str(images),
                      "--save_path", str(tmp_path / "out"), "--on_error", "stop", *RUNTIME)
    assert proc.returncode == 2 and error_line(proc).startswith("error: image ")
    assert "img_05b.png is unreadable" in error_line(proc)
    assert len(csv_rows(tmp_path / "out" / "predictions.csv")) == 4  # the first batch, written as produced
    assert not (tmp_path / "out" / "predictions.json").exists()


def test_a_previous_run_is_refused_or_replaced_and_the_output_folder_is_never_input(tmp_path, checkpoint):
    images = tmp_path / "parts"
    write_images(images, 3)
    argv = ["predict.py", "--checkpoint_path", str(checkpoint), "--input", str(images),
            "--save_path", str(images / "out"), *RUNTIME]  # the output folder inside the input folder
    assert run_script(*argv).returncode == 0
    again = run_script(*argv)
    assert again.returncode == 2 and "--overwrite" in error_line(again)
    (images / "out" / "figures" / "stale.png").write_bytes(b"old")
    assert run_script(*argv, "--overwrite").returncode == 0
    rows = csv_rows(images / "out" / "predictions.csv")
    assert len(rows) == 3 and not any("/out/" in r["path"] for r in rows)
    assert not (images / "out" / "figures" / "stale.png").exists()
    calibrated = run_script(*argv, "--overwrite", "--calibrate_on", str(images))
    threshold = images / "out" / "threshold.json"
    assert calibrated.returncode == 0 and threshold.is_file()
    reuse = run_script(*argv, "--overwrite", "--threshold_file", str(threshold))  # reads it, keeps it
    assert reuse.returncode == 0 and threshold.is_file()
    assert {r["decision"] for r in csv_rows(images / "out" / "predictions.csv")} == {"normal"}


def test_output_files_get_the_permissions_of_the_umask(tmp_path, checkpoint):
    images = tmp_path / "parts"
    write_images(images, 2)
    old = os.umask(0o022)
    try:
        save_json(tmp_path / "meta.json", {})
        model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
        predict(model, settings(PredictConfig, input=str(images), save_path=tmp_path / "out", calibrate_on=str(images),
                                     num_workers=0))
    finally:
        os.umask(old)
    for path in (tmp_path / "meta.json", tmp_path / "out" / "predictions.json", tmp_path / "out" / "predictions.csv",
                 tmp_path / "out" / "threshold.json"):
        assert path.stat().st_mode & 0o777 == 0o644, path












def test_calibrating_on_few_images_warns_with_the_number(tmp_path, caplog, checkpoint):
    write_images(tmp_path / "good", 3)
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    with caplog.at_level(logging.WARNING):
        predict(model, settings(PredictConfig, input=str(tmp_path / "good"), save_path=tmp_path / "out",
                                     calibrate_on=str(tmp_path / "good"), num_workers=0))
    assert "calibrated on only 3 good image(s) are uncertain" in caplog.text


@pytest.fixture
def partly_masked(tmp_path):
    root = write_mvtec_dataset(tmp_path / "data", ["disk", "ring"], n_good=2, n_defect=3, n_train=0,
                               size=(48, 48), seed=3)
    meta = mvtec_layout_index(root)
    missing = [r for r in meta["test"]["ring"] if r["anomaly"]][:2]
    for row in missing:
        row["mask_path"] = ""
    write_meta(root, meta)
    return root, [Path(r["img_path"]).name for r in missing]


def test_classes_with_all_masks_keep_pixel_metrics_and_the_warning_names_a_file(tmp_path, caplog, checkpoint,
                                                                              partly_masked):
    root, missing = partly_masked
    with caplog.at_level(logging.WARNING):
        cli.test_main(["--data_path", str(root), "--checkpoint_path", str(checkpoint), "--save_path",
                       str(tmp_path / "res"), *RUNTIME])
    results = json.loads((tmp_path / "res" / "results.json").read_text())
    assert results["classes"]["disk"]["pixel_auroc"] is not None
    assert results["classes"]["ring"]["pixel_auroc"] is None and results["classes"]["ring"]["image_auroc"] is not None
    assert "class ring: 2 anomalous image(s) have no mask" in caplog.text and missing[0] in caplog.text
    assert results["notes"] == ["pixel metrics null for ring: 2 of its 3 anomalous images have no mask"]
    assert results["dataset"] == "data"  # the data folder's name


def test_pixel_only_metrics_without_masks_exit_2(tmp_path, checkpoint, partly_masked):
    root, _ = partly_masked
    meta = json.loads((root / "meta.json").read_text())
    for row in meta["test"]["disk"]:
        row["mask_path"] = ""
    (root / "meta.json").write_text(json.dumps(meta))
    proc = run_script("test.py", "--data_path", str(root), "--checkpoint_path", str(checkpoint), "--metrics",
                      "pixel-level", "--save_path", str(tmp_path / "res"), *RUNTIME)
    assert proc.returncode == 2 and "--metrics pixel-level: no class of" in error_line(proc)
    assert not (tmp_path / "res" / "results.json").exists()


MISTAKES = [
    ("test.py", ["--device", "mps"], "--device mps asked for Apple's MPS"),
    ("test.py", ["--image_size", "10"], "--image_size 10 is smaller than the backbone's patch of 14 pixels"),
    ("test.py", ["--num_workers", "-1"], "--num_workers must be auto or a count of at least 0, got -1"),
    ("test.py", ["--save_path", "FILE"], "--save_path .* is a file, not a folder"),
    ("test.py", ["--features_list", "2", "2"], r"--features_list \[2, 2\] names a layer twice"),
    ("test.py", ["--sigma", "-1"], "--sigma must not be negative, got -1.0"),
    ("train.py", ["--learning_rate", "-0.1"], "--learning_rate must be positive, got -0.1"),
    ("train.py", ["--epoch", "0"], "--epoch must be at least 1, got 0"),
    ("predict.py", ["--bit_depth", "20"], "--bit_depth must be between 8 and 16, got 20"),
]


@pytest.mark.parametrize("script,extra,pattern", MISTAKES, ids=[" ".join(m[1]) for m in MISTAKES])
def test_mistakes_end_as_one_line_with_exit_2(tmp_path, checkpoint, source_data, clip_file, script, extra, pattern):
    import re
    (tmp_path / "FILE").write_text("")
    extra = [str(tmp_path / "FILE") if e == "FILE" else e for e in extra]
    where = {"test.py": ["--data_path", str(source_data), "--checkpoint_path", str(checkpoint)],
             "predict.py": ["--input", str(source_data), "--checkpoint_path", str(checkpoint)],
             "train.py": ["--train_data_path", str(source_data), "--pretrained", str(clip_file), *SMALL[:-6]]}[script]
    save = [] if "--save_path" in extra else ["--save_path", str(tmp_path / "out")]
    proc = run_script(script, *where, *save, *RUNTIME, *extra)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = error_line(proc)
    assert line.startswith("error: ") and re.search(pattern, line), line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())




def test_overwrite_never_removes_folders_no_run_wrote_and_inputs_inside_the_output_are_explained(tmp_path):
    from dhrclip.engine.prediction import check_save_path, collect_images
    from dhrclip.errors import UserError
    (tmp_path / "project" / "figures").mkdir(parents=True)
    (tmp_path / "project" / "figures" / "thesis_plot.pdf").write_text("mine")
    config = settings(PredictConfig, input="x", save_path=tmp_path / "project", overwrite=True)
    with pytest.raises(UserError, match="no prediction run wrote") as error:
        check_save_path(config)
    assert error.value.field == "save_path" and (tmp_path / "project" / "figures" / "thesis_plot.pdf").exists()
    write_images(tmp_path / "project" / "shots", 2)
    with pytest.raises(UserError, match="2 left out: they are inside the output folder"):
        collect_images(str(tmp_path / "project" / "shots"), exclude=tmp_path / "project")


