"""A new user's runs, through the scripts: bad files, re-runs, figures, bit depth, partial masks, mistakes."""
import csv
import json
import logging
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, RUNTIME, SMALL
from dhrclip import DHRCLIP, PredictConfig, cli, predict
from dhrclip.data.canvases import worker_count
from dhrclip.data.images import load_rgb
from dhrclip.files import save_json
from dhrclip.data.indexing import mvtec_layout_index, write_meta
from dhrclip.data.synthetic import synthetic_image, write_mvtec_dataset
from dhrclip.engine.figures import DISPLAY_MAX, DISPLAY_MIN, ColorScale, prediction_figure


def write_images(folder, count, size=(40, 48), seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(synthetic_image("grain", *size, rng)).save(folder / f"img_{i:02d}.png")


def run_script(*argv, cwd=ROOT):
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True)


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
        predict(model, PredictConfig(input=str(images), save_path=tmp_path / "out", calibrate_on=str(images),
                                     num_workers=0))
    finally:
        os.umask(old)
    for path in (tmp_path / "meta.json", tmp_path / "out" / "predictions.json", tmp_path / "out" / "predictions.csv",
                 tmp_path / "out" / "threshold.json"):
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_figures_share_one_colour_scale_with_the_threshold_in_the_middle():
    scale = ColorScale.around(0.2, 1.0, threshold=0.8)
    assert (scale.low, scale.high) == pytest.approx((0.2, 1.4)) and scale(np.array([0.8]))[0] == pytest.approx(0.5)
    assert ColorScale.around(0.2, 1.0)(np.array([0.2, 1.0])).tolist() == [0.0, 1.0]
    calm = np.full((20, 20), 0.3, np.float32)
    image = np.zeros((20, 20, 3), np.uint8)
    small = prediction_figure(image, calm, scale, "a.png", 0.1, "normal", 0.8)
    assert small.shape[0] >= DISPLAY_MIN and small.shape[1] >= 3 * DISPLAY_MIN  # upscaled for display
    heat = small[small.shape[0] // 2, DISPLAY_MIN + DISPLAY_MIN // 2]  # middle of the heatmap panel
    assert heat[2] > heat[0]  # a calm map stays blue: its value is below the threshold in the middle
    big = prediction_figure(np.zeros((3000, 4000, 3), np.uint8), np.zeros((3000, 4000), np.float32), scale,
                            "b.png", 0.9, "anomalous", 0.8)
    assert big.shape[1] <= 3 * DISPLAY_MAX + 100 and big.shape[0] <= DISPLAY_MAX


def test_all_figures_of_a_run_share_one_colour_bar_unless_asked_per_image(tmp_path, checkpoint):
    rng = np.random.default_rng(4)
    (tmp_path / "in").mkdir()
    calm = synthetic_image("grain", 48, 48, rng)
    Image.fromarray(calm).save(tmp_path / "in" / "calm.png")
    defect = calm.copy()
    defect[10:30, 10:30] = (220, 30, 30)
    Image.fromarray(defect).save(tmp_path / "in" / "defect.png")
    bars = {}
    for mode in ("run", "image"):
        proc = run_script("predict.py", "--checkpoint_path", str(checkpoint), "--input", str(tmp_path / "in"),
                          "--save_path", str(tmp_path / mode), "--figure_scale", mode, *RUNTIME)
        assert proc.returncode == 0, proc.stderr[-2000:]
        figures = [cv2.imread(str(tmp_path / mode / "figures" / f"{n}_png.png")) for n in ("calm", "defect")]
        bars[mode] = [f[:, -60:] for f in figures]  # the labelled colour bar on the right
    assert np.array_equal(*bars["run"]) and not np.array_equal(*bars["image"])


def test_vis_figures_keep_the_aspect_ratio(tmp_path, checkpoint, target_data):
    cli.test_main(["--data_path", str(target_data), "--checkpoint_path", str(checkpoint), "--save_path",
                   str(tmp_path / "res"), "--vis", "--classes", "ring", *RUNTIME])
    figure = cv2.imread(str(next((tmp_path / "res" / "vis" / "ring").glob("*.png"))))
    # 64x80 images shown at 256x320: three panels of 320 and a colour bar; two title rows above.
    assert figure.shape[:2] == (256 + 24 + 28, 3 * 320 + 72)


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


def test_calibrating_on_few_images_warns_with_the_number(tmp_path, caplog, checkpoint):
    write_images(tmp_path / "good", 3)
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    with caplog.at_level(logging.WARNING):
        predict(model, PredictConfig(input=str(tmp_path / "good"), save_path=tmp_path / "out",
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


def test_auto_workers_start_none_for_small_jobs():
    assert worker_count("auto", 10) == 0 and worker_count("auto", 1000) >= 1 and worker_count(3, 10) == 3


def test_overwrite_never_removes_folders_no_run_wrote_and_inputs_inside_the_output_are_explained(tmp_path):
    from dhrclip.errors import UserError
    from dhrclip.engine.prediction import check_save_path, collect_images
    (tmp_path / "project" / "figures").mkdir(parents=True)
    (tmp_path / "project" / "figures" / "thesis_plot.pdf").write_text("mine")
    config = PredictConfig(input="x", save_path=tmp_path / "project", overwrite=True)
    with pytest.raises(UserError, match="no prediction run wrote") as error:
        check_save_path(config)
    assert error.value.field == "save_path" and (tmp_path / "project" / "figures" / "thesis_plot.pdf").exists()
    write_images(tmp_path / "project" / "shots", 2)
    with pytest.raises(UserError, match="2 left out: they are inside the output folder"):
        collect_images(str(tmp_path / "project" / "shots"), exclude=tmp_path / "project")


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
