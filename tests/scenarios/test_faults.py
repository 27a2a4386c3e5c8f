"""Faults of the machine and crafted inputs that ask for too much: the commands end in one line
(exit 2, or exit 3 with an error row), within bounded memory, and leave no half-written file."""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, RUNTIME, SMALL
from PIL import Image

from dhrclip.data.synthetic import synthetic_image
from dhrclip.files import TEMPORARY_SUFFIX

# Runs commands in one interpreter under resource limits, after the libraries' code is mapped:
# PyTorch's CPU libraries alone take about 3.5 GB of address space before any work starts, so
# the address-space budget is counted from what the interpreter holds once they are loaded.
DRIVER = r"""
import contextlib, io, json, resource, sys
import cv2, numpy, onnxruntime, open_clip, PIL.Image, sklearn.metrics, torch
from dhrclip import cli

def mapped():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))

limits = json.loads(sys.argv[1])
if "address_gib" in limits:
    budget = mapped() + int(limits["address_gib"] * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (budget, resource.getrlimit(resource.RLIMIT_AS)[1]))
if "file_bytes" in limits:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_bytes"], resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
results = []
for command, argv in json.loads(sys.argv[2]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            getattr(cli, command + "_main")(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code
    results.append({"code": code, "stderr": err.getvalue()})
print("RESULTS " + json.dumps(results))
"""


def limited(limits: dict, *commands: tuple[str, list[str]]) -> list[dict]:
    """Each command's exit status and stderr, run one after the other under ``limits``."""
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(limits), json.dumps(commands)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "RESULTS " in proc.stdout, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("RESULTS ", 1)[1])


def one_error_line(result: dict) -> str:
    """The last stderr line, which must be the only error and no traceback."""
    assert "Traceback" not in result["stderr"], result["stderr"][-3000:]
    lines = [line for line in result["stderr"].splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result["stderr"][-3000:]
    return lines[0]


def sparse_png(path: Path, width: int, height: int) -> Path:
    """A black grey-scale PNG of width×height pixels in a small file: it decodes to ~1000× its size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), bytes(width + 1)  # a filter byte and the row's pixels
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def lying_archive(path: Path, declared: int) -> Path:
    """A checkpoint-shaped zip whose tensor entry declares ``declared`` bytes in its headers: what a
    zip bomb looks like to a reader that trusts the sizes it is told."""
    entry = b"bomb/data/0"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr(entry.decode(), bytes(1_000_000))
    raw = bytearray(path.read_bytes())
    # (signature, offset of the uncompressed size, of the name's length, of the name): local header, central directory
    for signature, size_at, length_at, name_at in ((b"PK\x03\x04", 22, 26, 30), (b"PK\x01\x02", 24, 28, 46)):
        at = raw.find(signature)
        while at != -1:
            length = struct.unpack_from("<H", raw, at + length_at)[0]
            if raw[at + name_at:at + name_at + length] == entry:
                struct.pack_into("<I", raw, at + size_at, declared)
            at = raw.find(signature, at + 4)
    path.write_bytes(bytes(raw))
    assert zipfile.ZipFile(path).getinfo(entry.decode()).file_size == declared
    return path


@pytest.fixture(scope="module")
def crafted(tmp_path_factory, source_data, checkpoint):
    """The crafted inputs: training data with a 121-megapixel PNG of 120 KB among its images, a
    checkpoint zip declaring a 2 GB tensor, a checkpoint and an ONNX file recording a 200,000-pixel
    canvas, and a folder with a small image and the huge one."""
    import onnx
    from onnx import TensorProto, helper

    root = tmp_path_factory.mktemp("crafted")
    data = shutil.copytree(source_data, root / "data")
    sparse_png(data / "disk" / "test" / "good" / "000.png", 11_000, 11_000)
    lying_archive(root / "bomb.pth", 2_000_000_000)
    saved = torch.load(checkpoint / "epoch_1.pth", weights_only=True)
    saved["config"]["target_image_size"] = 200_000
    torch.save(saved, root / "huge_canvas.pth")
    graph = helper.make_graph([helper.make_node("Identity", ["canvas"], ["anomaly_map"])], "crafted",
                              [helper.make_tensor_value_info("canvas", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in {"config": json.dumps(saved["config"]), "canvas": "200000"}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"dhrclip.{key}", value
    onnx.save(model, root / "huge_canvas.onnx")
    parts = root / "parts"
    parts.mkdir()
    Image.fromarray(synthetic_image("grain", 60, 80, np.random.default_rng(0))).save(parts / "small.png")
    sparse_png(parts / "huge.png", 11_000, 11_000)
    return root


def test_crafted_inputs_end_in_one_line_within_two_gib(crafted, checkpoint, clip_file, tmp_path):
    """Items that asked for gigabytes: a huge PNG among training images (its size read from the
    header, item 7's grid groups), a zip bomb as checkpoint, a crafted canvas in a checkpoint and
    in an ONNX file, and a huge PNG given to predict.py."""
    out = str(tmp_path / "out")
    results = limited(
        {"address_gib": 2},
        ("train", ["--train_data_path", str(crafted / "data"), "--save_path", str(tmp_path / "run"), "--pretrained",
                   str(clip_file), "--epoch", "1", "--grid", "auto", *SMALL]),
        ("test", ["--checkpoint_path", str(crafted / "bomb.pth"), "--data_path", str(crafted / "data"),
                  "--save_path", out, *RUNTIME]),
        ("test", ["--checkpoint_path", str(crafted / "huge_canvas.pth"), "--data_path", str(crafted / "data"),
                  "--save_path", out, *RUNTIME]),
        ("predict", ["--onnx", str(crafted / "huge_canvas.onnx"), "--input", str(crafted / "parts"),
                     "--save_path", out, "--num_workers", "0"]),
        ("predict", ["--checkpoint_path", str(checkpoint), "--input", str(crafted / "parts"), "--save_path",
                     str(tmp_path / "skipped"), *RUNTIME]),
        ("predict", ["--checkpoint_path", str(checkpoint), "--input", str(crafted / "parts"), "--save_path",
                     str(tmp_path / "stopped"), "--on_error", "stop", *RUNTIME]))
    huge_training_image, bomb, canvas, onnx_canvas, skipped, stopped = results
    for result in (huge_training_image, bomb, canvas, onnx_canvas, stopped):
        assert result["code"] == 2, result["stderr"][-3000:]
    assert "000.png is 11000x11000 (121 megapixels), over the limit of --max_megapixels 100" in \
        one_error_line(huge_training_image)
    assert "declares 2,000 MB of data in a file of 0.00" in one_error_line(bomb)
    assert '"config.target_image_size"' in one_error_line(canvas) and "200000" in one_error_line(canvas)
    assert '"config.target_image_size"' in one_error_line(onnx_canvas)
    assert "huge.png is 11000x11000" in one_error_line(stopped)
    assert skipped["code"] == 3 and "Traceback" not in skipped["stderr"]
    rows = {Path(row["path"]).name: row for row in
            json.loads((tmp_path / "skipped" / "predictions.json").read_text())["predictions"]}
    assert "over the limit of max_megapixels 100" in rows["huge.png"]["error"] and not rows["small.png"]["error"]


def test_a_full_disk_ends_in_one_line_and_leaves_no_half_file(tmp_path, source_data, checkpoint, clip_file):
    """Writes past a file-size limit fail as on a full disk (the system refuses the bytes): the
    checkpoint and the maps are written atomically, so neither a truncated file nor a temporary
    one stays behind, and the error names the file; the disk feature cache reserves its space
    before it maps its files, so it fails at once, in one line, instead of a bus error."""
    parts = tmp_path / "parts"
    parts.mkdir()
    for k in range(3):
        Image.fromarray(synthetic_image("grain", 120, 120, np.random.default_rng(k))).save(parts / f"{k}.png")
    train, cached, predict = limited(
        {"file_bytes": 16_000},  # more than the logs and CSV rows, less than a checkpoint, a map or the cache
        ("train", ["--train_data_path", str(source_data), "--save_path", str(tmp_path / "run"), "--pretrained",
                   str(clip_file), "--epoch", "1", *SMALL]),
        ("train", ["--train_data_path", str(source_data), "--save_path", str(tmp_path / "cached"), "--pretrained",
                   str(clip_file), "--epoch", "2", "--feature_cache", "disk", *SMALL]),
        ("predict", ["--checkpoint_path", str(checkpoint), "--input", str(parts), "--save_path",
                     str(tmp_path / "out"), *RUNTIME]))
    assert train["code"] == 2 and cached["code"] == 2 and predict["code"] == 2
    assert f"cannot write {tmp_path / 'run' / 'epoch_1.pth'}: File too large" in one_error_line(train)
    assert "cannot make the feature cache file" in one_error_line(cached)
    assert "File too large; free disk space or set --feature_cache off" in one_error_line(cached)
    assert not (tmp_path / "cached" / "feature_cache").exists()
    assert f"cannot write {tmp_path / 'out' / 'maps'}" in one_error_line(predict)
    assert not (tmp_path / "run" / "epoch_1.pth").exists() and not list((tmp_path / "out" / "maps").iterdir())
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(TEMPORARY_SUFFIX)]


def test_the_next_run_removes_what_a_killed_run_left_half_written(tmp_path, source_data, checkpoint, clip_file):
    """``kill -9`` during an atomic write leaves its temporary file; the next run into the same
    folder removes it (and nothing else)."""
    from conftest import predict_cli, train_small

    run, out = tmp_path / "run", tmp_path / "out"
    (out / "maps" / "nested").mkdir(parents=True)
    (out / "predictions.csv").write_text("path\n")  # what a killed predict.py leaves
    stale = [run / f".epoch_1.pth.a1b2c3{TEMPORARY_SUFFIX}", out / f".predictions.json.x9{TEMPORARY_SUFFIX}",
             out / "maps" / "nested" / f".0_png.npy.q7{TEMPORARY_SUFFIX}"]
    kept = [run / "notes.tmp", out / f".notes.txt{TEMPORARY_SUFFIX}.bak"]  # names that only resemble ours
    for path in [*stale, *kept]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    train_small(source_data, run, clip_file)
    predict_cli("--checkpoint_path", str(checkpoint), "--input", str(source_data / "disk" / "train"), "--save_path",
                str(out), "--overwrite")
    assert not [p for p in stale if p.exists()] and all(p.exists() for p in kept)


def test_a_lost_process_of_a_torchrun_job_is_one_line_naming_it(tmp_path, source_data, clip_file):
    """Process 1 dies (as under ``kill -9``) in the middle of training; process 0 says which one and
    stops, instead of a gloo traceback."""
    script = tmp_path / "dies.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from dhrclip import cli\n"
        "from dhrclip.engine import training\n"
        "loss = training._loss\n"
        "def dying(net, batch, text, weight):\n"
        "    if os.environ['RANK'] == '1':\n"
        "        os._exit(9)\n"
        "    return loss(net, batch, text, weight)\n"
        "training._loss = dying\n"
        "cli.train_main(sys.argv[1:])\n")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), "--train_data_path", str(source_data), "--save_path", str(tmp_path / "run"),
                           "--pretrained", str(clip_file), "--epoch", "1", "--feature_cache", "off", *SMALL],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "error: process 0 of 2 stopped: " in proc.stderr, proc.stderr[-3000:]
    line = next(line for line in proc.stderr.splitlines() if line.startswith("error: process 0 of 2"))
    assert "process 1 of this torchrun job died" in line or "torchrun ended it" in line, line
    assert "pair.cc" not in proc.stderr  # gloo's own message, in a traceback
