"""The page's work without the web: the disk its uploads may take, the refused files it keeps,
a batch that fails on a full disk."""
from __future__ import annotations

import io
import time
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from dhrclip import DHRCLIP
from dhrclip.config import page_run
from dhrclip.data.synthetic import synthetic_image
from dhrclip.errors import UserError
from dhrclip.page import inspector as inspection
from dhrclip.page.inspector import AppSettings, Inspector
from dhrclip.page.uploads import Limits, footprint


def png(seed: int, height: int = 40, width: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(synthetic_image("grain", height, width, np.random.default_rng(seed))).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def make(checkpoint, tmp_path):
    """Started inspectors with the given limits, stopped after the test."""
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    started: list[Inspector] = []

    def make(**limits: int) -> Inspector:
        settings = AppSettings(run=replace(page_run(), batch_size=4), limits=Limits(**limits))
        inspector = Inspector(model, settings, tmp_path / f"work{len(started)}")
        inspector.start()
        started.append(inspector)
        return inspector

    yield make
    for inspector in started:
        inspector.stop()


def settled(inspector: Inspector) -> dict:
    deadline = time.monotonic() + 120
    while (state := inspector.state(None, None))["working"] or state["progress"]["queued"]:
        assert time.monotonic() < deadline, state
        time.sleep(0.05)
    return state


def files(*data: bytes, names: list[str] | None = None) -> list:
    return [(name, io.BytesIO(d)) for name, d in zip(names or [f"{k}.png" for k in range(len(data))], data)]


def used(inspector: Inspector) -> int:
    return sum(p.stat().st_size for p in inspector.folder.rglob("*") if p.is_file())


def test_the_work_folder_takes_no_more_than_its_budget(make, tmp_path):
    one = tmp_path / "one.png"
    one.write_bytes(png(0))
    need = footprint(one)  # each image here: a 40×48 PNG, its map and its figure's arrays
    inspector = make(max_work_bytes=3 * need + need // 2)
    inspector.add_images(files(*(png(k) for k in range(5))))
    state = settled(inspector)
    statuses = [e["status"] for e in state["entries"]]
    assert statuses == ["done"] * 3 + ["error"] * 2
    assert all("work folder is full" in e["error"] for e in state["entries"][3:])
    assert used(inspector) <= 3 * need + need // 2  # the estimate holds what the results take
    inspector.clear()
    settled(inspector)
    inspector.add_images(files(png(7)))
    assert [e["status"] for e in settled(inspector)["entries"]] == ["done"]  # clearing gave the room back


def test_refused_files_kept_are_capped_newest_first(make):
    inspector = make(max_errors=5)
    for round_ in range(3):
        inspector.add_images(files(*(b"not an image" for _ in range(4)),
                                   names=[f"bad_{round_}_{k}.png" for k in range(4)]))
    inspector.add_images(files(png(1)))
    entries = settled(inspector)["entries"]
    assert [e["name"] for e in entries if e["status"] == "error"] == [
        "bad_1_3.png", "bad_2_0.png", "bad_2_1.png", "bad_2_2.png", "bad_2_3.png"]
    assert [e["status"] for e in entries if e["name"] == "0.png"] == ["done"]


def test_a_batch_that_meets_a_full_disk_frees_its_uploads(make, monkeypatch):
    inspector = make()

    def full(path, array):
        raise UserError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(inspection, "save_npy", full)
    inspector.add_images(files(png(1), png(2)))
    state = settled(inspector)
    assert [e["status"] for e in state["entries"]] == ["error", "error"]
    assert any("No space left on device" in n["text"] for n in state["notices"])
    assert not [p for p in inspector.folder.rglob("*") if p.is_file()] and inspector._work_bytes == 0
