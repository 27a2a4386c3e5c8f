"""ONNX export and the torch-free runtime: maps and scores against PyTorch, metadata, predict.py --onnx."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image

from dhrclip import DHRCLIP, cli
from dhrclip.data.synthetic import synthetic_image
from dhrclip.deploy.runtime import OnnxDetector, resize_bilinear
from dhrclip.files import TEMPORARY_SUFFIX

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parts")
    rng = np.random.default_rng(3)
    for k, (h, w) in enumerate([(80, 100), (64, 64), (120, 90), (70, 140)]):
        Image.fromarray(synthetic_image("disk", h, w, rng)).save(folder / f"part_{k}.png")
    Image.fromarray(synthetic_image("disk", 50, 50, rng)).convert("L").save(folder / "gray.png")
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory, checkpoint, parts):
    """The tiny checkpoint exported with thresholds calibrated on the fixed grid."""
    out = tmp_path_factory.mktemp("export")
    cli.predict_main(["--checkpoint_path", str(checkpoint), "--input", str(parts), "--calibrate_on", str(parts),
                      "--grid", "fixed", "--save_path", str(out / "calibration"), "--device", "cpu",
                      "--num_workers", "0"])
    for name in STALE + OTHERS:  # as a killed export leaves them
        (out / name).write_bytes(b"half")
    cli.export_main(["--checkpoint_path", str(checkpoint), "--output", str(out / "model.onnx"), "--threshold_file",
                     str(out / "calibration" / "threshold.json"), "--device", "cpu"])
    return out / "model.onnx"


STALE = [f".model.onnx.k3j4.trace{TEMPORARY_SUFFIX}", f".model.onnx.z9{TEMPORARY_SUFFIX}"]
OTHERS = [f".other.onnx.a1{TEMPORARY_SUFFIX}"]  # another file's: left alone


def test_an_export_removes_what_a_killed_export_into_the_same_file_left(exported):
    assert not [name for name in STALE if (exported.parent / name).exists()]
    assert all((exported.parent / name).exists() for name in OTHERS)


def test_onnx_maps_and_scores_match_pytorch_at_batch_1_and_3(exported, checkpoint):
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu", precision="fp32")
    onnx_model = OnnxDetector(exported)
    size = model.config.target_image_size
    canvases = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    want_maps, want_scores = model.model(canvases)
    three = onnx_model.run(canvases.numpy())
    ones = [onnx_model.run(canvases[i:i + 1].numpy()) for i in range(3)]
    for maps, scores in [three, (np.concatenate([m for m, _ in ones]), np.concatenate([s for _, s in ones]))]:
        assert np.abs(maps - want_maps.numpy()).max() < 1e-3
        assert np.abs(scores - want_scores.numpy()).max() < 1e-4
    assert np.abs(three[0] - np.concatenate([m for m, _ in ones])).max() < 1e-5  # batch size changes nothing


def test_metadata_carries_settings_thresholds_and_version(exported, checkpoint):
    import dhrclip

    onnx_model = OnnxDetector(exported)
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    assert onnx_model.config == model.config
    assert onnx_model.metadata.version == dhrclip.__version__
    saved = json.loads((exported.parent / "calibration" / "threshold.json").read_text())
    assert onnx_model.image_threshold == saved["image_threshold"]
    assert onnx_model.pixel_threshold == saved["pixel_threshold"]
    import onnx

    assert onnx.load(str(exported)).opset_import[0].version >= 17


def test_runtime_runs_with_torch_blocked(exported, parts):
    """The runtime imports numpy, Pillow and onnxruntime only: importing torch (and the rest of the
    training stack) is made to fail in a fresh interpreter."""
    script = f"""
import importlib.abc, json, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "open_clip", "cv2", "sklearn", "skimage", "scipy"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Blocked())
from dhrclip.deploy.runtime import OnnxDetector
detector = OnnxDetector({str(exported)!r})
results = detector.predict([{str(parts / "part_0.png")!r}, {str(parts / "gray.png")!r}])
print(json.dumps([[r.anomaly_map.shape, r.score, detector.decide(r)] for r in results]))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (first, gray) = json.loads(done.stdout.strip().splitlines()[-1])
    assert first[0] == [80, 100] and gray[0] == [50, 50] and first[2] in ("normal", "anomalous")


def test_predict_with_onnx_gives_the_pytorch_decisions(exported, checkpoint, parts, tmp_path):
    common = ["--input", str(parts), "--num_workers", "0", "--batch_size", "2"]
    threshold = ["--threshold_file", str(exported.parent / "calibration" / "threshold.json")]
    cli.predict_main(["--onnx", str(exported), "--save_path", str(tmp_path / "onnx"), *common])  # its own thresholds
    cli.predict_main(["--checkpoint_path", str(checkpoint), "--grid", "fixed", "--device", "cpu",
                      "--save_path", str(tmp_path / "torch"), *threshold, *common])

    def rows(name):
        with open(tmp_path / name / "predictions.csv") as handle:
            return list(csv.DictReader(handle))

    onnx_rows, torch_rows = rows("onnx"), rows("torch")
    assert [r["path"] for r in onnx_rows] == [r["path"] for r in torch_rows]
    assert [r["decision"] for r in onnx_rows] == [r["decision"] for r in torch_rows]
    assert all(r["decision"] == "normal" for r in onnx_rows)  # calibrated on these very images
    for a, b in zip(onnx_rows, torch_rows):
        assert float(a["image_score"]) == pytest.approx(float(b["image_score"]), abs=1e-4)
        assert float(a["map_max"]) == pytest.approx(float(b["map_max"]), abs=1e-3)
    assert len(list((tmp_path / "onnx" / "figures").glob("*.png"))) == 5


def test_what_cannot_be_exported_is_refused_naming_the_flag(checkpoint, tmp_path, capsys, exported, parts):
    with pytest.raises(SystemExit):
        cli.export_main(["--checkpoint_path", str(checkpoint), "--output", str(tmp_path / "m.onnx"),
                         "--grid", "auto", "--device", "cpu"])
    assert "--grid" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.predict_main(["--onnx", str(exported), "--input", str(parts), "--grid", "auto",
                          "--save_path", str(tmp_path / "p")])
    assert "--grid" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.predict_main(["--onnx", str(exported), "--input", str(parts), "--sigma", "4",
                          "--save_path", str(tmp_path / "q")])
    assert "--sigma" in capsys.readouterr().err


def test_thresholds_of_predict_pys_default_grid_name_the_flag_that_calibrates_for_the_export(checkpoint, parts,
                                                                                           tmp_path, capsys):
    """predict.py calibrates on the auto grid by default; the export holds the fixed grid, so export.py says
    in one line which flag gives thresholds it can take."""
    cli.predict_main(["--checkpoint_path", str(checkpoint), "--input", str(parts), "--calibrate_on", str(parts),
                      "--save_path", str(tmp_path / "predictions"), "--device", "cpu", "--num_workers", "0"])
    with pytest.raises(SystemExit) as done:
        cli.export_main(["--checkpoint_path", str(checkpoint), "--threshold_file",
                         str(tmp_path / "predictions" / "threshold.json"), "--output", str(tmp_path / "m.onnx"),
                         "--device", "cpu"])
    error = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(error) == 1 and "predict.py --grid fixed --calibrate_on" in error[0]
    assert not (tmp_path / "m.onnx").exists()


def test_fp16_export_and_a_baked_reference_bank(checkpoint, parts, tmp_path):
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu", precision="fp32")
    few = model.with_reference(sorted(parts.glob("part_*.png"))[:2], grid="fixed")
    from dhrclip.deploy.export import export_onnx

    export_onnx(few, tmp_path / "few.onnx")
    export_onnx(model, tmp_path / "half.onnx", precision="fp16")
    size = model.config.target_image_size
    canvases = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    few_maps, few_scores = few.model(canvases)
    got_maps, got_scores = OnnxDetector(tmp_path / "few.onnx").run(canvases.numpy())
    assert np.abs(got_maps - few_maps.numpy()).max() < 1e-3 and np.abs(got_scores - few_scores.numpy()).max() < 1e-4
    half = OnnxDetector(tmp_path / "half.onnx")
    assert half.metadata.precision == "fp16"
    half_maps, _ = half.run(canvases.numpy())
    plain_maps, _ = model.model(canvases)
    assert np.abs(half_maps - plain_maps.numpy()).max() < 0.02  # half precision in the vision tower


def test_resize_bilinear_equals_opencv():
    import cv2

    amap = np.random.default_rng(0).random((37, 53)).astype(np.float32)
    for h, w in [(80, 100), (20, 20), (37, 53), (111, 7)]:
        want = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
        assert np.abs(resize_bilinear(amap, h, w) - want).max() < 1e-5


def test_decisions_agree_when_thresholds_split_the_images(exported, checkpoint, parts, tmp_path):
    onnx_model = OnnxDetector(exported)
    results = onnx_model.predict(sorted(str(p) for p in parts.glob("*.png")))
    scores = sorted(r.score for r in results)
    peaks = sorted(r.map_max for r in results)
    cut = ["--threshold", str((scores[1] + scores[2]) / 2), "--pixel_threshold", str((peaks[3] + peaks[4]) / 2)]
    common = ["--input", str(parts), "--num_workers", "0", *cut]
    cli.predict_main(["--onnx", str(exported), "--save_path", str(tmp_path / "onnx"), *common])
    cli.predict_main(["--checkpoint_path", str(checkpoint), "--grid", "fixed", "--device", "cpu",
                      "--save_path", str(tmp_path / "torch"), *common])
    decisions = {}
    for name in ("onnx", "torch"):
        with open(tmp_path / name / "predictions.csv") as handle:
            decisions[name] = [row["decision"] for row in csv.DictReader(handle)]
    assert decisions["onnx"] == decisions["torch"]
    assert set(decisions["onnx"]) == {"normal", "anomalous"}  # the cut does split them


def test_bad_thresholds_opsets_and_flags_are_refused(checkpoint, exported, parts, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"image_threshold": "high"}))
    cases = [
        (cli.export_main, ["--checkpoint_path", str(checkpoint), "--output", str(tmp_path / "a.onnx"),
                           "--threshold_file", str(bad), "--device", "cpu"], "--threshold_file"),
        (cli.export_main, ["--checkpoint_path", str(checkpoint), "--output", str(tmp_path / "b.onnx"),
                           "--opset", "17", "--device", "cpu"], "--opset"),
        (cli.predict_main, ["--onnx", str(exported), "--input", str(parts), "--precision", "fp16",
                            "--save_path", str(tmp_path / "c")], "--precision"),
        (cli.predict_main, ["--onnx", str(exported), "--input", str(parts), "--device", "cuda",
                            "--save_path", str(tmp_path / "d")], "--device"),
    ]
    cases.append((cli.export_main, ["--checkpoint_path", str(checkpoint), "--output", str(exported), "--device", "cpu"],
                  "--overwrite"))  # an existing file is not replaced unless asked
    for main, argv, flag in cases:
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 2 and flag in capsys.readouterr().err, flag
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()


def test_calibrating_on_a_baked_banks_own_images_is_refused(checkpoint, parts, tmp_path, capsys):
    goods = tmp_path / "good"
    goods.mkdir()
    for k in range(2):
        (goods / f"g{k}.png").write_bytes((parts / f"part_{k}.png").read_bytes())
    cli.export_main(["--checkpoint_path", str(checkpoint), "--output", str(tmp_path / "few.onnx"),
                     "--reference", str(goods), "--device", "cpu"])
    assert OnnxDetector(tmp_path / "few.onnx").reference_sources == [str(p.resolve()) for p in sorted(goods.iterdir())]
    with pytest.raises(SystemExit):
        cli.predict_main(["--onnx", str(tmp_path / "few.onnx"), "--input", str(goods), "--calibrate_on", str(goods),
                          "--save_path", str(tmp_path / "out")])
    assert "cannot leave an image out" in capsys.readouterr().err


def test_an_interrupted_export_leaves_the_previous_file_whole(exported, checkpoint, tmp_path, monkeypatch):
    """The graph is traced into a temporary file and renamed over the output only once whole, so an
    export stopped half-way (here by Ctrl+C in the trace; ``kill -9`` alike) keeps the old file."""
    target = tmp_path / "model.onnx"
    shutil.copyfile(exported, target)
    before = target.read_bytes()

    def interrupted(module, args, path, **kwargs):
        Path(path).write_bytes(b"half a graph")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.onnx, "export", interrupted)
    with pytest.raises(SystemExit):
        cli.export_main(["--checkpoint_path", str(checkpoint), "--output", str(target), "--overwrite",
                         "--device", "cpu"])
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    OnnxDetector(target)  # still a whole file with its metadata


def test_the_onnx_path_refuses_images_over_max_megapixels_from_their_header(exported, parts, tmp_path):
    with pytest.raises(SystemExit) as stopped:  # 120×90 and 70×140 are over 0.0097 megapixels
        cli.predict_main(["--onnx", str(exported), "--input", str(parts), "--save_path", str(tmp_path / "out"),
                          "--num_workers", "0", "--max_megapixels", "0.0097"])
    assert stopped.value.code == 3
    rows = {Path(r["path"]).name: r for r in json.loads((tmp_path / "out" / "predictions.json").read_text())
            ["predictions"]}
    assert sorted(n for n, r in rows.items() if r["error"]) == ["part_2.png", "part_3.png"]
    assert all("over the limit of max_megapixels 0.0097" in rows[n]["error"] for n in ("part_2.png", "part_3.png"))
