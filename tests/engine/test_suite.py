"""The zero-shot suite: one checkpoint on every dataset present under a data root, one table."""
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, RUNTIME, settings
from layouts import image, mask, replicas

from dhrclip.config import EvalConfig
from dhrclip.detector.facade import DHRCLIP
from dhrclip.engine.suite import COLUMNS, block_mean, format_suite, run_suite
from dhrclip.errors import UserError


def test_suite_script_tests_what_is_present_in_literature_blocks(tmp_path, checkpoint):
    data = replicas(tmp_path / "data")
    out = tmp_path / "suite"
    proc = subprocess.run(["bash", "scripts/zero_shot_suite.sh", str(checkpoint), str(data), "--save_path", str(out),
                           *RUNTIME], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "suite.json").read_text())
    rows = report["datasets"]
    assert [n for n, r in rows.items() if r["status"] == "tested"] == ["ksdd2", "headct", "kvasir"]
    assert set(report["absent"]) == set(rows) - {"ksdd2", "headct", "kvasir"} and not report["failed"]
    assert all(rows["ksdd2"]["metrics"][c] is not None for c in ("image_auroc", "image_ap", "pixel_auroc",
                                                                 "pixel_aupro"))
    headct, kvasir = rows["headct"]["metrics"], rows["kvasir"]["metrics"]
    assert headct["image_auroc"] is not None and headct["pixel_auroc"] is None and headct["pixel_aupro"] is None
    assert kvasir["image_auroc"] is None and kvasir["image_ap"] is None and kvasir["pixel_auroc"] is not None
    assert any("every test image is anomalous" in note for note in rows["kvasir"]["notes"])
    assert rows["headct"]["notes"] == ["pixel metrics null for brain: no masks (image-level ground truth only)"]
    # each block's mean is over its own datasets, where defined
    assert report["means"]["industrial"] == rows["ksdd2"]["metrics"]
    assert report["means"]["medical"]["image_auroc"] == headct["image_auroc"]
    assert report["means"]["medical"]["pixel_auroc"] == kvasir["pixel_auroc"]
    table = (out / "suite.md").read_text()
    lines = table.splitlines()
    order = [next(i for i, line in enumerate(lines) if line.startswith(f"| {name}")) for name in
             ("**industrial**", "ksdd2", "mean (industrial)", "**medical**", "headct", "kvasir", "mean (medical)")]
    assert order == sorted(order)
    kvasir_row = [c.strip() for c in lines[order[5]].split("|")[1:-1]]
    assert kvasir_row[1:3] == ["-", "-"] and kvasir_row[3] != "-"
    assert "Absent: mvtec, visa" in table
    for name in ("ksdd2", "headct", "kvasir"):
        assert (data / name / "meta.json").is_file() and (out / name / "results.json").is_file()


def test_a_dataset_that_fails_is_reported_and_the_others_go_on(tmp_path, checkpoint):
    data = replicas(tmp_path / "data")
    image(data / "tn3k" / "wrong" / "x.jpg")  # present, but not in any TN3K layout
    model = DHRCLIP.from_checkpoint(next(checkpoint.glob("*.pth")), device="cpu")
    test_config = settings(EvalConfig, data_path=data, save_path=tmp_path / "out", batch_size=4, num_workers=0)
    report = run_suite(model, data, test_config, ["tn3k", "headct", "mvtec"])
    assert report["datasets"]["tn3k"]["status"] == "failed" and "test-image/" in report["failed"]["tn3k"]
    assert report["datasets"]["headct"]["status"] == "tested" and report["absent"] == ["mvtec"]
    assert "Failed:\n- tn3k:" in (tmp_path / "out" / "suite.md").read_text()


def test_unknown_dataset_names_are_refused(tmp_path):
    test_config = settings(EvalConfig, data_path=tmp_path, save_path=tmp_path / "out")
    with pytest.raises(UserError, match="unknown datasets"):
        run_suite(None, tmp_path, test_config, ["kvasir", "mnist"])


def test_block_means_take_each_column_over_the_datasets_that_define_it():
    def tested(domain, *values):
        return {"domain": domain, "status": "tested", "metrics": dict(zip(COLUMNS, values)), "notes": []}
    rows = {"a": tested("medical", 0.5, 0.6, None, None), "b": tested("medical", None, None, 0.9, 0.3),
            "c": tested("medical", 0.7, 0.8, 0.7, 0.5), "d": tested("industrial", 0.1, 0.2, 0.3, 0.4),
            "e": {"domain": "medical", "status": "absent"}}
    means = block_mean(rows, "medical")
    assert means == pytest.approx({"image_auroc": 0.6, "image_ap": 0.7, "pixel_auroc": 0.8, "pixel_aupro": 0.4})
    report = {"header": "checkpoint c | zero-shot", "datasets": rows,
              "means": {"industrial": block_mean(rows, "industrial"), "medical": means},
              "absent": ["e"], "failed": {}, "not_applicable": {}}
    lines = format_suite(report).splitlines()
    assert lines[0] == "checkpoint c | zero-shot"  # what the table is comes first
    assert [c.strip() for c in next(line for line in lines if line.startswith("| a ")).split("|")[1:-1]] == \
        ["a", "50.0", "60.0", "-", "-"]
    assert [c.strip() for c in next(line for line in lines if "mean (medical)" in line).split("|")[1:-1]] == \
        ["mean (medical)", "60.0", "70.0", "80.0", "40.0"]
    assert lines[-1] == "Absent: e"


def test_few_shot_suite_marks_datasets_without_training_images_not_applicable(tmp_path, checkpoint, caplog):
    data = replicas(tmp_path / "data")
    (data / "headct" / "meta.json").write_text(json.dumps({"train": {}, "test": {"brain": [
        {"img_path": "head_ct/head_ct/000.png", "mask_path": "", "cls_name": "brain", "specie_name": "",
         "anomaly": 1}, {"img_path": "head_ct/head_ct/005.png", "mask_path": "", "cls_name": "brain",
                         "specie_name": "", "anomaly": 0}]}}))  # an index from elsewhere
    model = DHRCLIP.from_checkpoint(next(checkpoint.glob("*.pth")), device="cpu")
    test_config = settings(EvalConfig, data_path=data, save_path=tmp_path / "out", batch_size=4, num_workers=0,
                           k_shot=1)
    report = run_suite(model, data, test_config, ["ksdd2", "headct"])
    assert report["datasets"]["ksdd2"]["status"] == "tested" and not report["failed"]
    assert "no normal training images" in report["not_applicable"]["headct"]
    assert "was not written by generate_dataset_json/headct.py" in caplog.text


def test_one_folder_under_two_names_or_a_file_is_refused(tmp_path, checkpoint):
    data = tmp_path / "data"
    for name in ("CVC-ClinicDB", "Kvasir"):
        for i in range(2):
            image(tmp_path / "TestDataset" / name / "images" / f"{i}.png")
            mask(tmp_path / "TestDataset" / name / "masks" / f"{i}.png")
    data.mkdir()
    for name in ("clinicdb", "kvasir"):
        (data / name).symlink_to(tmp_path / "TestDataset")
    (data / "mvtec").write_text("not a folder")
    test_config = settings(EvalConfig, data_path=data, save_path=tmp_path / "out", batch_size=4, num_workers=0)
    model = DHRCLIP.from_checkpoint(next(checkpoint.glob("*.pth")), device="cpu")
    report = run_suite(model, data, test_config, ["clinicdb", "kvasir", "mvtec"])
    assert report["datasets"]["clinicdb"]["status"] == "tested"
    assert "is the folder of clinicdb too" in report["failed"]["kvasir"]
    assert "is not a folder" in report["failed"]["mvtec"]
    (data / "kvasir").unlink()
    (data / "kvasir").symlink_to(tmp_path / "TestDataset" / "Kvasir")
    (data / "kvasir" / "meta.json").write_text((tmp_path / "TestDataset" / "meta.json").read_text())
    report = run_suite(model, data, test_config, ["kvasir"])
    assert "indexes clinicdb, not kvasir" in report["failed"]["kvasir"]

