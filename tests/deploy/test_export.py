"""ONNX export and the torch-free runtime: maps and scores against PyTorch, metadata, predict.py --onnx."""
from __future__ import annotations

import csv
import dataclasses
import importlib.metadata
import json
import os
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
from dhrclip.core import budget
from dhrclip.data.images import resize_bilinear
from dhrclip.data.synthetic import synthetic_image
from dhrclip.deploy.runtime import OnnxDetector
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


def assert_split_batches_match_single_canvases(detector, placements, monkeypatch):
    """With the CPU budget set to two canvases' tiles, a batch of five runs in calls of 2, 2 and 1,
    and gives what the canvases give one at a time."""
    placed = placements[0]
    tokens = (placed.tiles.tile // detector.metadata.patch) ** 2 + 1
    monkeypatch.setattr(budget, "CPU_ACTIVATIONS", 2 * placed.rows * placed.cols * tokens * detector.metadata.width)
    assert detector.calls_of(placed) == 2
    rng = np.random.default_rng(5)
    canvases = rng.integers(0, 256, (len(placements), 3, *placed.tiles.size), dtype=np.uint8)
    fixed = all(p.fills_canvas for p in placements) and "box" not in detector.session.inputs
    ones = [detector.run(canvases[i:i + 1], None if fixed else placements[i:i + 1]) for i in range(len(placements))]
    calls = []
    run = detector.session.run
    monkeypatch.setattr(detector.session, "run", lambda feed: calls.append(len(feed["canvas"])) or run(feed))
    maps, scores = detector.run(canvases, None if fixed else placements)
    assert calls == [2, 2, 1]
    assert np.abs(maps - np.concatenate([m for m, _ in ones])).max() < 1e-5
    assert np.abs(scores - np.concatenate([s for _, s in ones])).max() < 1e-5


def test_on_the_cpu_a_batch_runs_in_calls_within_one_forwards_budget(exported, monkeypatch):
    detector = OnnxDetector(exported)
    assert detector.session.splits_batches and detector.metadata.width == 128  # the tiny CLIP's
    assert_split_batches_match_single_canvases(detector, [detector.grid.place(0, 0)] * 5, monkeypatch)


def test_a_file_that_does_not_record_its_width_runs_a_batch_in_one_call(exported, monkeypatch):
    detector = OnnxDetector(exported)
    detector.metadata = dataclasses.replace(detector.metadata, width=None)  # as files of older releases
    monkeypatch.setattr(budget, "CPU_ACTIVATIONS", 1)
    calls = []
    run = detector.session.run
    monkeypatch.setattr(detector.session, "run", lambda feed: calls.append(len(feed["canvas"])) or run(feed))
    size = detector.config.target_image_size
    detector.run(np.zeros((3, 3, size, size), dtype=np.uint8))
    assert calls == [3]


def test_the_profiling_script_accounts_for_the_kernel_time_and_times_calls(exported):
    done = subprocess.run([sys.executable, "scripts/profile_deploy.py", "--onnx", str(exported), "--profile", "--batch",
                           "2", "--calls", "1", "2", "--attention", "--views", "2", "--rounds", "1"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    attention, profiled, timed = (json.loads(line) for line in done.stdout.strip().splitlines())
    assert len(attention["attention_ms"]) == 4 and all(ms > 0 for ms in attention["attention_ms"].values())
    assert profiled["batch"] == 2 and profiled["kernel_ms_per_call"] > 0
    assert set(profiled["share"]) == {"vision tower", "rest", "shape arithmetic"}
    assert abs(sum(profiled["share"].values()) - 1) < 0.01 and profiled["share"]["vision tower"] > 0.2
    assert set(timed["images_per_s"]) == {"calls of 1", "calls of 2"}


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

    assert onnx.load(str(exported)).opset_import[0].version == 18


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


def test_what_an_exported_file_fixes_is_refused_naming_the_flag(checkpoint, tmp_path, capsys, exported, parts):
    with pytest.raises(SystemExit):
        cli.predict_main(["--onnx", str(exported), "--input", str(parts), "--grid", "auto",
                          "--save_path", str(tmp_path / "p")])
    assert "--grid" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.predict_main(["--onnx", str(exported), "--input", str(parts), "--sigma", "4",
                          "--save_path", str(tmp_path / "q")])
    assert "--sigma" in capsys.readouterr().err


def test_predict_calibrate_export_predict_with_default_flags_on_every_aspect_ratio(checkpoint, tmp_path, monkeypatch):
    """The README's journey with no grid flag anywhere: predict.py calibrates on its default
    (auto) grid, export.py exports that grid, and predict.py --onnx gives the PyTorch run's
    decisions and maps on images of 1:3, 3:1, 4:3, square and 2448×1024."""
    rng = np.random.default_rng(11)
    parts, good = tmp_path / "parts", tmp_path / "good"
    parts.mkdir()
    good.mkdir()
    for name, (h, w) in {"tall": (180, 60), "wide": (60, 180), "four_three": (90, 120), "square": (100, 100),
                         "camera": (1024, 2448)}.items():
        Image.fromarray(synthetic_image("disk", h, w, rng)).save(parts / f"{name}.png")
    for k, (h, w) in enumerate([(100, 100), (90, 120), (60, 180), (120, 90)]):
        Image.fromarray(synthetic_image("disk", h, w, rng)).save(good / f"good_{k}.png")
    runtime = ["--device", "cpu", "--num_workers", "0"]
    cli.predict_main(["--checkpoint_path", str(checkpoint), "--input", str(parts), "--calibrate_on", str(good),
                      "--save_path", str(tmp_path / "predictions"), *runtime])
    cli.export_main(["--checkpoint_path", str(checkpoint), "--threshold_file",
                     str(tmp_path / "predictions" / "threshold.json"), "--output", str(tmp_path / "m.onnx"),
                     "--device", "cpu"])
    exported = OnnxDetector(tmp_path / "m.onnx")
    assert exported.metadata.signature.grid == {"mode": "auto", "max_tiles": 9}
    cli.predict_main(["--onnx", str(tmp_path / "m.onnx"), "--input", str(parts), "--save_path", str(tmp_path / "onnx"),
                      "--num_workers", "0"])

    def rows(name):
        with open(tmp_path / name / "predictions.csv") as handle:
            return {Path(r["path"]).name: r for r in csv.DictReader(handle)}

    torch_rows, onnx_rows = rows("predictions"), rows("onnx")
    assert {n: r["decision"] for n, r in onnx_rows.items()} == {n: r["decision"] for n, r in torch_rows.items()}
    assert {r["decision"] for r in torch_rows.values()} <= {"normal", "anomalous"} and len(torch_rows) == 5
    assert {n: (r["rows"], r["cols"]) for n, r in onnx_rows.items()} == \
        {n: (r["rows"], r["cols"]) for n, r in torch_rows.items()}
    for name in torch_rows:  # float16 files: one step of float16 apart at most
        saved = [np.load(tmp_path / run / "maps" / f"{Path(name).stem}_png.npy").astype(np.float32)
                 for run in ("predictions", "onnx")]
        assert saved[0].shape == saved[1].shape and np.abs(saved[0] - saved[1]).max() <= 2e-3
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    images = sorted(parts.iterdir())
    for a, b in zip(model.predict(images), exported.predict(images)):  # float32: within 1e-3
        assert a.grid == b.grid and np.abs(a.anomaly_map - b.anomaly_map).max() < 1e-3
        assert abs(a.score - b.score) < 1e-4
    boxes = [exported.grid.place(h, 120) for h in (90, 86, 80, 90, 84)]  # one canvas, boxes of their own
    assert len({p.to_tuple()[:5] for p in boxes}) == 1 and len({p.to_tuple()[5:] for p in boxes}) > 1
    assert_split_batches_match_single_canvases(exported, boxes, monkeypatch)


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


# ---- predict.py --onnx without torch ---------------------------------------------------------------
# A virtual environment with numpy, Pillow and onnxruntime and nothing heavier (no torch, open_clip,
# OpenCV, scikit-learn, scikit-image or SciPy), made from what this one has installed (nothing is
# downloaded): those three distributions are linked into it, and the project goes in as a wheel.
HEAVY = ("torch", "open_clip", "cv2", "sklearn", "skimage", "scipy")


def link_distribution(name: str, site: Path) -> None:
    """Make an installed distribution importable in ``site`` by linking its top-level entries."""
    dist = importlib.metadata.distribution(name)
    base = Path(dist.locate_file(""))
    for top in sorted({Path(str(f)).parts[0] for f in dist.files or []}):
        if top != ".." and not (site / top).exists():
            (site / top).symlink_to(base / top)


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("light")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    for name in ("numpy", "pillow", "onnxruntime"):
        link_distribution(name, site)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(work / "dist"), str(ROOT)], check=True, capture_output=True)
    wheel = next((work / "dist").glob("dhrclip-*.whl"))
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # else pip may see a checkout as installed
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True, env=clean)
    return venv


def rows(folder: Path) -> dict[str, dict]:
    with open(folder / "predictions.csv") as handle:
        return {Path(row["path"]).name: row for row in csv.DictReader(handle)}


def test_predict_onnx_runs_without_torch_and_gives_the_same_table(light_venv, exported, checkpoint, parts, tmp_path):
    """predict.py --onnx and dhrclip-predict --onnx in the light venv write the table the PyTorch
    path (--checkpoint_path, the file's grid and thresholds) writes here."""
    python = light_venv / "bin" / "python"
    absent = subprocess.run([str(python), "-c", f"import importlib.util as u; print([m for m in {HEAVY!r} "
                             f"if u.find_spec(m)])"], capture_output=True, text=True, check=True)
    assert absent.stdout.strip() == "[]"  # none of the heavy packages is there to import
    common = ["--input", str(parts), "--num_workers", "0"]
    light = ["--onnx", str(exported), *common]
    script = subprocess.run([str(python), str(ROOT / "predict.py"), *light, "--save_path", str(tmp_path / "script")],
                            capture_output=True, text=True, cwd=tmp_path)
    command = subprocess.run([str(light_venv / "bin" / "dhrclip-predict"), *light, "--save_path",
                              str(tmp_path / "command")], capture_output=True, text=True, cwd=tmp_path)
    for done in (script, command):
        assert done.returncode == 0, done.stderr[-3000:]
    cli.predict_main(["--checkpoint_path", str(checkpoint), "--grid", "fixed", "--device", "cpu", "--threshold_file",
                      str(exported.parent / "calibration" / "threshold.json"), *common,
                      "--save_path", str(tmp_path / "torch")])
    torch_rows = rows(tmp_path / "torch")
    for name in ("script", "command"):
        found = rows(tmp_path / name)
        assert sorted(found) == sorted(torch_rows)
        assert {k: r["decision"] for k, r in found.items()} == {k: r["decision"] for k, r in torch_rows.items()}
        for k, r in torch_rows.items():
            assert abs(float(found[k]["image_score"]) - float(r["image_score"])) < 1e-4
            assert abs(float(found[k]["map_max"]) - float(r["map_max"])) < 1e-3
    assert len(list((tmp_path / "command" / "figures").glob("*.png"))) == len(torch_rows)


def test_openvino_runs_the_file_as_onnxruntime_does(exported, parts, tmp_path):
    pytest.importorskip("openvino")
    images = sorted(parts.iterdir())
    for a, b in zip(OnnxDetector(exported).predict(images), OnnxDetector(exported, runtime="openvino").predict(images)):
        assert np.abs(a.anomaly_map - b.anomaly_map).max() < 1e-4 and abs(a.score - b.score) < 1e-5
    cli.predict_main(["--onnx", str(exported), "--input", str(parts), "--runtime", "openvino", "--num_workers", "0",
                      "--save_path", str(tmp_path / "openvino")])
    cli.predict_main(["--onnx", str(exported), "--input", str(parts), "--num_workers", "0",
                      "--save_path", str(tmp_path / "onnxruntime")])
    assert {k: r["decision"] for k, r in rows(tmp_path / "openvino").items()} == \
        {k: r["decision"] for k, r in rows(tmp_path / "onnxruntime").items()}


INT8_PIXEL_AUROC_BOUND = 1.0  # points of pixel AUROC the int8 file may lose against fp32 (docs/benchmarks.md)


def test_int8_keeps_the_pixel_auroc_of_fp32_within_its_bound(exported, checkpoint, target_data, tmp_path):
    """The int8 export of the same detector, on the synthetic test set with masks: its pixel AUROC
    is within ``INT8_PIXEL_AUROC_BOUND`` points of the fp32 file's."""
    from sklearn.metrics import roc_auc_score

    from dhrclip.data.images import load_mask
    from dhrclip.data.meta import read_meta
    from dhrclip.deploy.export import export_onnx

    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu", precision="fp32")
    export_onnx(model, tmp_path / "int8.onnx", precision="int8")
    items = [item for rows_ in read_meta(target_data).values() for item in rows_]
    truth = np.concatenate([(load_mask(i.masks) if i.masks else np.zeros(load_rgb_shape(i.image), bool)).ravel()
                            for i in items])
    auroc = {}
    for name, path in (("fp32", exported), ("int8", tmp_path / "int8.onnx")):
        results = OnnxDetector(path).predict([i.image for i in items])
        auroc[name] = 100 * roc_auc_score(truth, np.concatenate([r.anomaly_map.ravel() for r in results]))
    assert OnnxDetector(tmp_path / "int8.onnx").metadata.precision == "int8"
    assert abs(auroc["int8"] - auroc["fp32"]) <= INT8_PIXEL_AUROC_BOUND, auroc


def load_rgb_shape(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.height, img.width


def test_the_exported_file_gets_the_umasks_permissions(exported):
    import os

    mask = os.umask(0)
    os.umask(mask)
    assert exported.stat().st_mode & 0o777 == 0o666 & ~mask
