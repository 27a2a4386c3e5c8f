"""The README's examples run as written: every Python block, and every shell command that can run on
this machine, against the tiny model, in a folder laid out with the names the README uses. Commands
that need what a test machine lacks are skipped by name, in ``SKIPPED``; a command the test neither
runs nor skips fails it, so a new example must be one or the other."""
from __future__ import annotations

import os
import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, write_custom_layout
from PIL import Image

from dhrclip import cli
from dhrclip.data.indexing import mvtec_layout_index, write_meta
from dhrclip.data.synthetic import synthetic_image, write_mvtec_dataset

BLOCK = re.compile(r"^```(python|bash)\n(.*?)^```$", re.S | re.M)

# commands skipped, by how they start, and why
SKIPPED = {
    "bash scripts/setup.sh": "sets up the environment (CI runs it before the suite)",
    ".venv/bin/python -m pytest": "the suite itself",
    ".venv/bin/python demo.py": "the whole demo (minutes; tests/data/test_indexing.py runs its protocol)",
    ".venv/bin/python -m pip": "installs packages (needs the network)",
    "pip install": "installs packages (needs the network)",
    ".venv/bin/python app.py": "a web server that runs until stopped (tests/page runs the page)",
    ".venv/bin/python generate_dataset_json/mvtec.py": "needs MVTec AD on disk",
    ".venv/bin/python generate_dataset_json/visa.py": "needs VisA on disk",
    ".venv/bin/python generate_dataset_json/kvasir.py": "needs Kvasir-SEG on disk",
    "scripts/zero_shot_suite.sh": "needs the benchmark datasets on disk",
    "bash run_DHRCLIP.sh": "needs the real CLIP weights, MVTec AD and VisA",
    "torchrun": "needs several GPUs (tests/engine/test_distributed.py runs torchrun on the CPU)",
}

COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "train.py": cli.train_main, "test.py": cli.test_main, "predict.py": cli.predict_main,
    "export.py": cli.export_main, "generate_dataset_json/folder.py": lambda argv: cli.index_main(["folder", *argv]),
    "dhrclip-predict": cli.predict_main, "dhrclip-index": cli.index_main,
}


def blocks() -> list[tuple[str, str, int]]:
    """(language, text, line) of every fenced Python and shell block of the README."""
    text = (ROOT / "README.md").read_text()
    return [(m[1], m[2], text[:m.start()].count("\n") + 1) for m in BLOCK.finditer(text)]


def commands(block: str, env: dict[str, str]) -> list[list[str]]:
    """The block's commands as argument lists: continuation lines joined, comments dropped, ``A && B``
    split, ``VAR=value`` lines kept in ``env``, and ``$VAR`` and placeholders written as a bare
    ``VAR`` (CKPT) replaced from ``env``."""
    found = []
    for line in block.replace("\\\n", " ").splitlines():
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            if len(words) == 1 and re.fullmatch(r"\w+=\S*", words[0]):
                key, value = words[0].split("=", 1)
                env[key] = value
            elif words:
                found.append([env.get(w, re.sub(r"\$(\w+)", lambda m: env[m[1]], w)) for w in words])
    return found


def runner(words: list[str]) -> tuple[Callable[[list[str]], None] | None, list[str], str | None]:
    """The entry point a command calls and its flags, or why it is skipped."""
    line = " ".join(words)
    reason = next((why for start, why in SKIPPED.items() if line.startswith(start)), None)
    if reason is not None:
        return None, [], reason
    if words[0] in (".venv/bin/python", "python") and len(words) > 1 and words[1] in COMMANDS:
        return COMMANDS[words[1]], words[2:], None
    if words[0] in COMMANDS:
        return COMMANDS[words[0]], words[1:], None
    raise AssertionError(f"the README's command {line!r} is neither run nor skipped by this test")


def images(folder: Path, count: int, seed: int, kind: str = "disk") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(count):
        Image.fromarray(synthetic_image(kind, 64, 80, rng)).save(folder / f"part_{k:03d}.png")
    return folder


def dataset(root: Path, classes: list[str], seed: int) -> Path:
    write_mvtec_dataset(root, classes, n_good=3, n_defect=3, n_train=4, size=(64, 80), seed=seed)
    write_meta(root, mvtec_layout_index(root))
    return root


@pytest.fixture
def sandbox(tmp_path, checkpoint, clip_file, source_data, monkeypatch):
    """A working folder with every name the README's examples use."""
    work = tmp_path / "work"
    (work / "runs" / "trained_on_mvtec").mkdir(parents=True)
    shutil.copy(next(checkpoint.glob("epoch_*.pth")), work / "runs" / "trained_on_mvtec" / "epoch_15.pth")
    for name, seed in (("my_parts", 1), ("new_parts", 2), ("parts", 3)):
        images(work / name, 3, seed)
    for name in ("my_good_parts", "good"):
        images(work / name, 4, 4)
    shutil.copy(work / "parts" / "part_000.png", work / "part.png")
    dataset(work / "data" / "visa", ["checker", "ring"], seed=5)
    write_custom_layout(work / "data" / "textile", with_masks=True)
    images(work / "more_good_textile", 4, 6, "waves")
    write_custom_layout(work / "my_dataset", with_masks=True)
    demo = work / "demo_output"
    demo.mkdir()
    shutil.copy(clip_file, demo / "tiny_random_clip.pt")
    shutil.copytree(source_data, demo / "data" / "source")
    dataset(demo / "data" / "target", ["ring", "checker"], seed=7)
    shutil.copytree(checkpoint, demo / "checkpoint")
    monkeypatch.chdir(work)
    return work


def test_every_readme_example_runs_or_is_skipped_by_name(sandbox):
    env = {"CKPT": "runs/trained_on_mvtec/epoch_15.pth"}
    ran, skipped = [], []
    for language, text, line in blocks():
        for name in ("predictions", "predictions_new", "onnx_predictions", "results"):  # each block starts afresh
            shutil.rmtree(sandbox / name, ignore_errors=True)
        if language == "python":
            exec(compile(text, f"README.md:{line}", "exec"), {})  # noqa: S102 - the README's own code
            ran.append(f"python block at line {line}")
            continue
        for words in commands(text, env):
            main, argv, reason = runner(words)
            if main is None:
                skipped.append((" ".join(words), reason))
                continue
            try:
                main(argv)
            except SystemExit as exc:
                assert exc.code in (0, None), f"README.md:{line}: {' '.join(words)} exited with {exc.code}"
            ran.append(" ".join(words))
    assert len([r for r in ran if r.startswith("python block")]) == 2
    assert any("export.py" in r for r in ran) and any("--onnx" in r for r in ran) and any("--k_shot" in r for r in ran)
    assert {reason for _, reason in skipped} <= set(SKIPPED.values())
    assert os.path.exists("demo_output/model.onnx") and os.path.exists("runs/trained_on_mvtec/epoch_15.pth")
