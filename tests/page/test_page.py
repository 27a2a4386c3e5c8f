"""The inspection page: its server against predict.py and on bad or hostile input, app.py as a user
starts and stops it, and the page itself in headless Chromium (Debian's chromium and
chromium-driver, through Selenium).

Without a browser the page test is skipped; with DHRCLIP_REQUIRE_BROWSER=1 (as in CI) it fails instead.
"""
import csv
import io
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, RUNTIME, predict_cli
from PIL import Image

from dhrclip import DHRCLIP, cli
from dhrclip.config import RunOptions, page_run
from dhrclip.data.synthetic import paint_defect, synthetic_image
from dhrclip.detector.results import CSV_FIELDS, Thresholds
from dhrclip.detector.thresholds import read_threshold_file, threshold_record
from dhrclip.files import TEMPORARY_SUFFIX, save_json

REQUIRED = os.environ.get("DHRCLIP_REQUIRE_BROWSER") == "1"
CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (DHRCLIP_REQUIRE_BROWSER=1)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


try:
    import httpx
    import uvicorn

    from dhrclip.page.inspector import AppSettings, Inspector
    from dhrclip.page.server import SHUTDOWN_SECONDS, bind, create_app
    from dhrclip.page.uploads import Limits
except ModuleNotFoundError as missing:
    _unavailable(f"the inspection page needs {missing.name}: pip install -e '.[dev]'")

LIMITS = Limits(max_file_bytes=256 * 1024, max_pixels=1_000_000, max_images=40, files_per_request=8)


def _save(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def _png(rgb: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> list[Path]:
    """Two parts of other sizes and textures, one with a painted defect, in predict.py's (sorted) order."""
    rng = np.random.default_rng(7)
    folder = tmp_path_factory.mktemp("parts")
    flawed, _ = paint_defect(synthetic_image("checker", 120, 150, rng), "blob", rng)
    return [_save(folder / "part_a.png", flawed), _save(folder / "part_b.png", synthetic_image("grain", 130, 100, rng))]


@pytest.fixture(scope="module")
def good_parts(tmp_path_factory) -> list[Path]:
    rng = np.random.default_rng(8)
    folder = tmp_path_factory.mktemp("good")
    return [_save(folder / f"good_{i}.png", synthetic_image("grain", 100, 100, rng)) for i in range(3)]


@pytest.fixture(scope="module")
def predicted(parts, checkpoint, tmp_path_factory) -> dict[str, tuple[float, np.ndarray]]:
    """predict.py's score and saved map of each part."""
    out = tmp_path_factory.mktemp("predicted") / "out"
    rows = predict_cli("--checkpoint_path", str(checkpoint), "--input", str(parts[0].parent), "--save_path", str(out))
    names = [Path(r["path"]).name for r in rows]
    return {name: (r["image_score"], np.load(out / "maps" / f"{name.replace('.', '_')}.npy"))
            for name, r in zip(names, rows)}


@pytest.fixture(scope="module")
def model(checkpoint) -> DHRCLIP:
    return DHRCLIP.from_checkpoint(checkpoint, device="cpu")


def checked_thresholds(path: Path, model: DHRCLIP) -> tuple[float | None, float | None]:
    """The thresholds of a threshold file, checked against ``model`` on the page's grid."""
    saved = read_threshold_file(path)
    saved.check(model.signature(page_run()))
    return saved.thresholds.image, saved.thresholds.pixel


def _settled(client: httpx.Client, **thresholds: float) -> dict:
    """The page's state once the server has nothing left to do."""
    deadline = time.monotonic() + 120
    while True:
        state = client.get("/api/state", params=thresholds).json()
        if not state["working"] and not state["progress"]["queued"]:
            return state
        assert time.monotonic() < deadline, f"the server is still working after 120 s: {state}"
        time.sleep(0.05)


class Server:
    """The page's server in this process, on a free port, with small limits."""

    def __init__(self, model: DHRCLIP, folder: Path) -> None:
        settings = AppSettings(run=replace(page_run(), batch_size=4), limits=LIMITS)  # as predict.py's tests run
        self.inspector = Inspector(model, settings, folder)
        self.inspector.start()
        sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.inspector, "127.0.0.1"), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        self.client = httpx.Client(base_url=self.url, timeout=60)
        while not self.server.started:
            self.thread.join(0.05)

    def upload(self, files: list[tuple[str, bytes]], where: str = "/api/upload") -> httpx.Response:
        return self.client.post(where, files=[("files", (name, data, "image/png")) for name, data in files])

    def state(self, **thresholds: float) -> dict:
        return _settled(self.client, **thresholds)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.inspector.stop()


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    running = Server(model, tmp_path_factory.mktemp("app"))
    yield running
    running.close()


@pytest.fixture
def page(server):
    server.client.post("/api/clear")
    server.state()
    return server


def test_scores_and_maps_equal_predict_pys(page, parts, predicted):
    response = page.upload([(p.name, p.read_bytes()) for p in parts])
    assert response.status_code == 200 and [e["name"] for e in response.json()["entries"]] == [p.name for p in parts]
    entries = {e["name"]: e for e in page.state()["entries"]}
    for name, (score, amap) in predicted.items():
        assert entries[name]["status"] == "done"
        assert entries[name]["score"] == pytest.approx(score, rel=1e-6, abs=1e-7)
        assert entries[name]["score_text"] == f"{score:.4f}"
    with zipfile.ZipFile(io.BytesIO(page.client.get("/api/maps.zip").content)) as archive:
        for name, (_, amap) in predicted.items():
            mine = np.load(io.BytesIO(archive.read(f"maps/{name.replace('.', '_')}.npy")))
            assert mine.dtype == np.float16 and mine.shape == amap.shape
            np.testing.assert_allclose(mine.astype(np.float32), amap.astype(np.float32), rtol=1e-3, atol=1e-3)
    leftovers = [p for p in page.inspector.folder.rglob("*") if p.suffix == ".zip" or p.name.endswith(TEMPORARY_SUFFIX)]
    assert not leftovers  # nothing left behind
    table = list(csv.DictReader(io.StringIO(page.client.get("/api/predictions.csv",
                                                            params={"image_threshold": 0.5}).text)))
    assert tuple(table[0]) == CSV_FIELDS and [r["path"] for r in table] == [p.name for p in parts]
    assert all(r["decision"] in ("normal", "anomalous") for r in table)
    figure = page.client.get(f"/api/figure/{entries[parts[0].name]['id']}.png",
                             params={"low": 0.0, "high": 2.0, "pixel_threshold": 1.0})
    assert figure.headers["content-type"] == "image/png" and Image.open(io.BytesIO(figure.content)).width > 500


class _FailingReader(io.RawIOBase):
    def read(self, size: int = -1) -> bytes:
        raise OSError(28, "No space left on device")


def test_bad_input_gets_a_message_per_file_and_the_server_goes_on(page, parts):
    good, jpeg, bomb = parts[0].read_bytes(), io.BytesIO(), io.BytesIO()
    Image.open(parts[0]).save(jpeg, "JPEG")
    Image.new("L", (1200, 1000)).save(bomb, "PNG")  # a few KB that decode to 1.2 megapixels, over the limit
    long_name = "a" * 300 + ".png"  # over the 255 bytes a file name may have on disk
    files = [("notes.png", b"a text file, renamed"), ("notes.txt", b"text"), ("empty.png", b""),
             ("cut.png", good[: len(good) // 2]), ("cut.jpg", jpeg.getvalue()[: len(jpeg.getvalue()) * 2 // 3]),
             ("bomb.png", bomb.getvalue()), ("huge.png", b"\0" * 300_000), ("../../escape.png", good)]
    assert page.upload(files).status_code == 200
    assert page.upload([(long_name, good)]).status_code == 200
    entries = {e["name"]: e for e in page.state()["entries"]}
    assert "not a readable image" in entries["notes.png"]["error"] and "/" not in entries["notes.png"]["error"]
    assert "not an image file" in entries["notes.txt"]["error"]
    assert "empty" in entries["empty.png"]["error"]
    assert "truncated" in entries["cut.png"]["error"]  # found in the header's checks
    assert entries["cut.jpg"]["error"].startswith("image cut.jpg is unreadable or truncated")  # found decoding
    assert "1200×1000 pixels (1.2 megapixels) is over the limit of 1.0 megapixels" in entries["bomb.png"]["error"]
    assert "larger than the limit of 256 KB per image" in entries["huge.png"]["error"]
    assert entries["escape.png"]["status"] == "done"  # the name's path parts are dropped
    assert entries[long_name]["status"] == "done"  # stored under the server's name, shown under its own
    stored = [p for p in page.inspector.folder.glob("batch*/*") if p.is_dir()]
    assert len(stored) == sum(e["status"] == "done" for e in entries.values()) == 2  # refused files leave none
    # a file that cannot be stored (the disk is full) gets its message too
    [failed] = page.inspector.add_images([("full.png", _FailingReader())])
    assert failed["error"] == "could not be stored on the server (No space left on device)"
    # whole requests refused with a message, not a crash
    too_many = page.upload([(f"{i}.png", good) for i in range(LIMITS.files_per_request + 1)])
    assert too_many.status_code == 400 and "Too many files" in too_many.json()["error"]
    too_big = page.client.post("/api/upload", content=b"x" * (LIMITS.max_request_bytes + 1),
                               headers={"content-type": "multipart/form-data; boundary=x"})
    assert too_big.status_code == 413 and "at most" in too_big.json()["error"]

    def chunked():  # no length stated: counted as it arrives
        yield b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n\r\n"
        for _ in range(LIMITS.max_request_bytes // 2**16 + 2):
            yield b"\0" * 2**16

    streamed = page.client.post("/api/upload", content=chunked(),
                                headers={"content-type": "multipart/form-data; boundary=x"})
    assert streamed.request.headers["transfer-encoding"] == "chunked"
    assert streamed.status_code == 413 and "at most" in streamed.json()["error"]
    assert page.client.get("/api/state", params={"image_threshold": "high"}).status_code == 400
    assert page.client.get("/api/figure/99999.png", params={"low": 0, "high": 1}).status_code == 404
    assert page.client.get("/api/threshold.json").status_code == 400  # no image threshold to save
    # and the next upload works
    assert page.upload([("again.png", good)]).status_code == 200
    assert {e["name"]: e for e in page.state()["entries"]}["again.png"]["status"] == "done"


def test_other_sites_are_refused(page, parts):
    port = page.url.rsplit(":", 1)[1]
    assert page.client.get("/api/state", headers={"host": f"attacker.example:{port}"}).status_code == 400
    assert page.client.get("/api/state", headers={"host": f"localhost:{port}"}).status_code == 200
    assert page.client.get("/api/state", headers={"host": f"[::1]:{port}"}).status_code == 200  # an address
    refused = page.client.post("/api/upload", headers={"origin": "http://attacker.example"},
                               files=[("files", ("a.png", parts[0].read_bytes(), "image/png"))])
    assert refused.status_code == 403 and "another site" in refused.json()["error"]
    assert page.client.request("DELETE", "/api/reference", headers={"origin": "null"}).status_code == 403
    assert page.client.post("/api/clear", headers={"origin": page.url}).status_code == 200
    assert page.state()["progress"]["total"] == 0
    # no other site may frame the page or have it load anything but its own files, errors included
    for response in (page.client.get("/"), page.client.get("/api/state"), refused,
                     page.client.get("/api/state", headers={"host": f"attacker.example:{port}"})):
        assert response.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert "default-src 'self'" in response.headers["content-security-policy"]


def test_uploads_at_once_stay_within_the_limit_and_names_pair_in_table_and_zip(page, parts):
    small = _png(np.asarray(Image.open(parts[1]).resize((40, 40))))
    requests = [[(f"part_{r}_{i}.png", small) for i in range(LIMITS.files_per_request)] for r in range(6)]
    with ThreadPoolExecutor(len(requests)) as pool:  # 48 files arrive together for 40 places
        answers = list(pool.map(page.upload, requests))
    assert all(a.status_code == 200 for a in answers)
    state = page.state()
    assert sum(e["status"] == "done" for e in state["entries"]) == LIMITS.max_images
    refused = [e for e in state["entries"] if e["status"] == "error"]
    assert len(refused) == 8 and all("at most 40 images" in e["error"] for e in refused)

    page.client.post("/api/clear")
    rng = np.random.default_rng(3)  # five images of other heights, two of one name, two of one map name
    names = ["same.png", "same.png", "=HYPERLINK(x).png", "a.b.png", "a_b.png"]
    sent = [(name, _png(synthetic_image("grain", 40 + 8 * k, 48, rng))) for k, name in enumerate(names)]
    page.upload(sent)
    page.state()
    table = list(csv.DictReader(io.StringIO(page.client.get("/api/predictions.csv").text)))
    assert [r["path"] for r in table] == ["same.png", "same (2).png", "'=HYPERLINK(x).png", "a.b.png", "a_b (2).png"]
    with zipfile.ZipFile(io.BytesIO(page.client.get("/api/maps.zip").content)) as archive:
        maps = {name: np.load(io.BytesIO(archive.read(name))) for name in archive.namelist()}
    assert len(maps) == len(table)
    for row, (_, data) in zip(table, sent):  # each row pairs with the map of its own image
        name = row["path"].removeprefix("'")
        amap = maps[f"maps/{name.replace('.', '_')}.npy"]
        assert amap.shape == Image.open(io.BytesIO(data)).size[::-1]
        assert float(amap.max()) == pytest.approx(float(row["map_max"]), rel=1e-3)


def test_saved_thresholds_are_accepted_by_predict_py(page, parts, model, checkpoint, tmp_path):
    page.upload([(p.name, p.read_bytes()) for p in parts])
    state = page.state()
    low, high = state["scale"]["low"], state["scale"]["high"]
    thresholds = {"image_threshold": state["entries"][0]["score"] - 1e-4, "pixel_threshold": (low + high) / 2}
    saved = page.client.get("/api/threshold.json", params=thresholds)
    assert saved.headers["content-disposition"] == 'attachment; filename="threshold.json"'
    (tmp_path / "threshold.json").write_bytes(saved.content)
    read = checked_thresholds(tmp_path / "threshold.json", model)
    assert read == (thresholds["image_threshold"], thresholds["pixel_threshold"])
    rows = predict_cli("--checkpoint_path", str(checkpoint), "--input", str(parts[0].parent),
                       "--threshold_file", str(tmp_path / "threshold.json"), "--save_path", str(tmp_path / "out"))
    shown = {e["name"]: e["decision"] for e in page.state(**thresholds)["entries"]}
    assert {Path(r["path"]).name: r["decision"] for r in rows} == shown
    assert shown[parts[0].name] == "anomalous"


def test_good_images_become_the_reference_calibrated_as_predict_py_does(page, parts, good_parts, model, checkpoint,
                                                                        tmp_path):
    page.upload([(parts[0].name, parts[0].read_bytes())])
    before = page.state()["entries"][0]
    response = page.upload([(p.name, p.read_bytes()) for p in good_parts], where="/api/reference")
    assert response.status_code == 200, response.text
    state = page.state()
    assert state["reference"] == {"images": 3, "origin": "uploaded"} and state["bank"]
    # predict.py on the same good images, as reference and calibration set, writes the same thresholds
    good = str(good_parts[0].parent)
    predict_cli("--checkpoint_path", str(checkpoint), "--input", good, "--reference", good, "--calibrate_on", good,
                "--save_path", str(tmp_path / "cli"))
    expected = json.loads((tmp_path / "cli" / "threshold.json").read_text())
    assert expected["leave_one_out"]
    calibrated = state["thresholds"]
    assert calibrated["image_threshold"] == pytest.approx(expected["image_threshold"], rel=1e-6)
    assert calibrated["pixel_threshold"] == pytest.approx(expected["pixel_threshold"], rel=1e-6)
    [entry] = state["entries"]  # run again with the bank: a new result under a new figure address
    assert entry["status"] == "done" and entry["score"] != before["score"] and entry["version"] != before["version"]
    # the bank and the thresholds saved from the page go together to predict.py
    (tmp_path / "bank.safetensors").write_bytes(page.client.get("/api/reference.safetensors").content)
    (tmp_path / "threshold.json").write_bytes(page.client.get(
        "/api/threshold.json", params={"image_threshold": calibrated["image_threshold"]}).content)
    with_bank = model.with_reference(tmp_path / "bank.safetensors", page_run())
    checked_thresholds(tmp_path / "threshold.json", with_bank)
    # what the page hands out names the images as uploaded and the files by name: no server folder
    handed_out = (tmp_path / "bank.safetensors").read_bytes().decode("latin-1") + \
        (tmp_path / "threshold.json").read_text()
    for folder in (page.inspector.folder, Path(model.checkpoint).parent, Path(model.config.pretrained).parent):
        assert str(folder) not in handed_out
    assert with_bank.bank.sources == [p.name for p in good_parts]
    record = json.loads((tmp_path / "threshold.json").read_text())
    assert record["checkpoint"] == Path(model.checkpoint).name
    assert record["config"]["pretrained"] == Path(model.config.pretrained).name
    refused = page.upload([("notes.png", b"text")], where="/api/reference")
    assert refused.status_code == 400 and "notes.png: not a readable image" in refused.json()["error"]
    # a second bank replaces the first, whose files go
    page.upload([(p.name, p.read_bytes()) for p in good_parts[:2]], where="/api/reference")
    assert page.state()["reference"]["images"] == 2
    assert [p.name for p in page.inspector.folder.glob("reference*")] == ["reference3"]
    # Remove: the bank's files go, and the sliders return to the startup thresholds (none here)
    assert page.client.delete("/api/reference").status_code == 200
    state = page.state()
    assert state["reference"] is None and not state["bank"] and not list(page.inspector.folder.glob("reference*"))
    assert (state["thresholds"]["image_threshold"], state["thresholds"]["pixel_threshold"]) == (None, None)
    assert state["entries"][0]["score"] == pytest.approx(before["score"], rel=1e-6)
    assert page.client.get("/api/reference.safetensors").status_code == 404
    saved = page.client.get("/api/threshold.json", params={"image_threshold": 0.5}).json()
    assert saved["reference"] is None
    checked_thresholds(tmp_path / "threshold.json", with_bank)  # the bank's own still hold for it
    (tmp_path / "after.json").write_text(json.dumps(saved))
    checked_thresholds(tmp_path / "after.json", model)  # and those saved now, for the model without


def test_a_failed_rerun_keeps_the_results_shown(page, parts, good_parts, monkeypatch):
    page.upload([(parts[0].name, parts[0].read_bytes())])
    page.upload([(p.name, p.read_bytes()) for p in good_parts], where="/api/reference")
    [before] = page.state()["entries"]

    def broken(*args, **kwargs):
        raise RuntimeError("out of device memory")

    monkeypatch.setattr(DHRCLIP, "iter_predictions", broken)
    page.client.delete("/api/reference")  # the results are run again without the bank: that fails
    state = page.state()
    [after] = state["entries"]
    assert after["status"] == "done" and after["score"] == before["score"] and after["version"] == before["version"]
    assert "previous detector's result" in after["note"]
    assert any("out of device memory" in n["text"] for n in state["notices"])
    figure = page.client.get(f"/api/figure/{after['id']}.png", params={"low": 0, "high": 1})
    assert figure.status_code == 200


def test_app_py_starts_from_a_threshold_file_and_a_reference(monkeypatch, capsys, checkpoint, model, good_parts,
                                                             tmp_path):
    run = RunOptions(grid="auto", batch_size=4, num_workers=0)
    few = model.with_reference(good_parts, run)
    save_json(tmp_path / "threshold.json", threshold_record(few.signature(run), Thresholds(0.3, 0.9), rule="by hand"))
    started = {}
    monkeypatch.setattr("dhrclip.page.server.serve", lambda model, settings, host, port, ready: started.update(
        model=model, settings=settings, host=host, port=port))
    common = ["--checkpoint_path", str(checkpoint), "--threshold_file", str(tmp_path / "threshold.json")]
    cli.app_main([*common, "--reference", str(good_parts[0].parent), "--batch_size", "4", "--device", "cpu"])
    settings = started["settings"]
    assert (settings.thresholds.image, settings.thresholds.pixel) == (0.3, 0.9)
    assert started["model"].reference_digest == few.reference_digest and started["host"] == "127.0.0.1"
    assert (settings.run.grid, settings.run.max_tiles, settings.run.batch_size, settings.run.num_workers) == \
        ("auto", 9, 4, 0)
    with pytest.raises(SystemExit) as exit_status:  # the same thresholds without their reference: refused
        cli.app_main([*common, *RUNTIME])
    assert exit_status.value.code == 2 and "--reference" in capsys.readouterr().err


def test_app_help_is_immediate(tmp_path):
    proc = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "app.py"), "--help"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 0 and "--threshold_file" in proc.stdout and "--max_megapixels" in proc.stdout
    assert not re.search(r"\|\s+torch$", proc.stderr, re.M)


# ---- app.py as a user starts it, and the page in a browser -------------------------------------------

@pytest.fixture(scope="module")
def app_py(checkpoint, tmp_path_factory):
    """app.py started as a user would, on a port the system picks, with its temporary folder in a
    folder of its own; its address from what it prints."""
    temp = tmp_path_factory.mktemp("app_tmp")
    (temp / "dhrclip-app-killed" / "batch0").mkdir(parents=True)  # what an app.py ended by kill -9 left
    (temp / "dhrclip-app-killed" / ".owner.lock").touch()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--checkpoint_path", str(checkpoint),
                             "--port", "0", *RUNTIME], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp_path_factory.mktemp("app_cwd"), env={**os.environ, "TMPDIR": str(temp)})
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    said = []
    try:
        while not (found := re.search(r"the inspection page is at (\S+)", said[-1] if said else "")):
            try:
                said.append(lines.get(timeout=120))
            except queue.Empty:
                pytest.fail("app.py did not start in 120 s:\n" + "".join(said))
            if proc.poll() is not None and lines.empty():
                pytest.fail("app.py ended:\n" + "".join(said))
        yield {"url": found.group(1), "proc": proc, "temp": temp}
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        _unavailable("headless Chromium is not installed: apt-get install chromium chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ModuleNotFoundError:
        _unavailable("the page test needs selenium: pip install -e '.[dev]'")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--hide-scrollbars", f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}", "--window-size=1440,1200"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    # the page's own security policy blocked nothing it needs
    blocked = [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
    driver.quit()
    assert not blocked, blocked


CARDS = """return [...document.querySelectorAll('.result')].map(e => ({
  name: e.querySelector('.name').textContent, status: e.dataset.status,
  score: e.querySelector('.score-value')?.textContent ?? null,
  decision: e.querySelector('.decision').textContent, error: e.querySelector('.error')?.textContent ?? null}))"""
SLIDE = """const s = document.getElementById(arguments[0]); s.value = arguments[1];
s.dispatchEvent(new Event('input', {bubbles: true})); return Number(s.value);"""
FIGURES_DRAWN = """return [...document.querySelectorAll('img.figure')].every(
  i => i.complete && i.naturalWidth > 0 && i.src.includes('pixel_threshold') && i.src.includes('v='))"""
WATCH_PROGRESS = """window.progressSeen = [];
new MutationObserver(() => window.progressSeen.push(document.getElementById('progress-text').textContent))
  .observe(document.getElementById('progress-text'), {childList: true, characterData: true, subtree: true});"""


def _wait(driver, condition, what: str, timeout: float = 60) -> list[dict]:
    """The result cards once ``condition(cards)`` holds."""
    from selenium.webdriver.support.ui import WebDriverWait

    seen: list[list[dict]] = [[]]

    def holds(d) -> bool:
        seen[0] = d.execute_script(CARDS)
        return bool(condition(seen[0]))

    try:
        WebDriverWait(driver, timeout, poll_frequency=0.1).until(holds)
    except Exception as exc:
        raise AssertionError(f"the page never showed {what}; it shows {seen[0]}") from exc
    return seen[0]


def test_the_page_in_a_browser(browser, app_py, parts, good_parts, predicted, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    number = lambda which: browser.find_element(By.ID, f"{which}-number").get_attribute("value")  # noqa: E731
    browser.get(app_py["url"])
    _wait(browser, lambda cards: "checkpoint" in browser.find_element(By.ID, "model").text, "the model")
    header = browser.find_element(By.ID, "model").text  # what was loaded: the tiny test file's own architecture
    assert "a ViT of 4 layers, width 128, patch 14 from weights tiny_openai.pt (not ViT-L-14-336-quickgelu)" in header
    assert "megapixels per image" in browser.find_element(By.ID, "caps").text
    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in parts))
    cards = _wait(browser, lambda cards: len(cards) == 2 and all(c["status"] == "done" for c in cards),
                  "two results")
    assert {c["name"]: c["score"] for c in cards} == {name: f"{score:.4f}" for name, (score, _) in predicted.items()}
    assert all(c["decision"] == "no threshold" for c in cards)

    # the image threshold slider: past the score, the decision flips, with no model run in between
    name, score = parts[0].name, predicted[parts[0].name][0]
    decision = lambda cards: {c["name"]: c["decision"] for c in cards}[name]  # noqa: E731
    assert browser.execute_script(SLIDE, "image-slider", score - 0.005) < score
    _wait(browser, lambda cards: decision(cards) == "anomalous", f"{name} anomalous below its score")
    assert browser.execute_script(SLIDE, "image-slider", score + 0.005) > score
    _wait(browser, lambda cards: decision(cards) == "normal", f"{name} normal above its score")
    slider = browser.find_element(By.ID, "image-slider")
    slider.send_keys(Keys.HOME)  # the keyboard moves it too: 0 flags every part
    _wait(browser, lambda cards: all(c["decision"] == "anomalous" for c in cards), "every part anomalous")
    assert number("image") == "0.0000"
    # a typed value is rounded to the digits shown, and that value is the one saved
    box = browser.find_element(By.ID, "image-number")
    box.clear()
    box.send_keys("0.123456789", Keys.ENTER)
    browser.execute_script("document.activeElement.blur()")
    saved = lambda: browser.find_element(By.ID, "save-thresholds").get_attribute("href")  # noqa: E731
    _wait(browser, lambda cards: number("image") == "0.1235" and saved().endswith("image_threshold=0.1235"),
          "the typed threshold, rounded, in the box and in what is saved")

    # thresholds between the parts, an outline on the maps, and a picture of it
    scores = sorted(s for s, _ in predicted.values())
    browser.execute_script(SLIDE, "image-slider", sum(scores) / 2)
    low, high = (float(browser.find_element(By.ID, "pixel-slider").get_attribute(k)) for k in ("min", "max"))
    browser.execute_script(SLIDE, "pixel-slider", low + 0.75 * (high - low))
    _wait(browser, lambda cards: browser.execute_script(FIGURES_DRAWN), "figures with outlines")
    href = browser.find_element(By.ID, "save-thresholds").get_attribute("href")
    assert "image_threshold=" in href and "pixel_threshold=" in href
    browser.execute_script("document.activeElement.blur()")
    shot = Path(os.environ.get("DHRCLIP_ARTIFACTS", tmp_path)) / "app.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")

    # a reference calibrates the sliders; removing it puts them back where they started (unset)
    browser.execute_script("document.getElementById('reference-panel').open = true")
    browser.find_element(By.ID, "reference-files").send_keys("\n".join(str(p) for p in good_parts))
    _wait(browser, lambda cards: len(number("image")) > 6, "calibrated thresholds, in full")
    browser.find_element(By.ID, "drop-reference").click()
    _wait(browser, lambda cards: number("image") == "" and number("pixel") == "", "the thresholds unset again")

    # a text file renamed .png gets a message on the page, and the next upload still works
    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    browser.find_element(By.ID, "files").send_keys(str(fake))
    cards = _wait(browser, lambda cards: any(c["status"] == "error" for c in cards), "an error")
    assert "notes.png" in [c["name"] for c in cards if c["status"] == "error"]
    assert "not a readable image" in next(c["error"] for c in cards if c["status"] == "error")
    browser.find_element(By.ID, "files").send_keys(str(parts[1]))
    _wait(browser, lambda cards: sum(c["status"] == "done" for c in cards) == 3, "a third result")

    # Clear drops the parts of a selection not sent yet
    rng = np.random.default_rng(5)
    many = [_save(tmp_path / "many" / f"m{i:02d}.png", synthetic_image("grain", 40, 40, rng)) for i in range(40)]
    shown = browser.execute_script(CARDS)
    browser.find_element(By.ID, "clear").click()
    browser.switch_to.alert.dismiss()  # Clear asks first: dismissed, nothing is removed
    time.sleep(0.5)
    assert browser.execute_script(CARDS) == shown
    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in many))
    browser.find_element(By.ID, "clear").click()
    browser.switch_to.alert.accept()
    _wait(browser, lambda cards: not cards and not browser.find_element(By.ID, "progress").is_displayed(),
          "an empty page, with nothing more on its way")
    # more files than one request takes go in parts, with the progress bar counting them
    many = many[:20]
    browser.execute_script(WATCH_PROGRESS)
    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in many))
    _wait(browser, lambda cards: len(cards) == 20 and all(c["status"] == "done" for c in cards), "20 results")
    seen = browser.execute_script("return window.progressSeen")
    assert any(re.search(r"sending \d+ of 20 files", text) for text in seen), seen
    assert any(re.search(r"inspected \d+ of 20", text) for text in seen), seen
    _wait(browser, lambda cards: not browser.find_element(By.ID, "progress").is_displayed(), "the bar gone")


def test_app_py_gives_predict_pys_scores_and_removes_its_files_when_killed(app_py, parts, predicted):
    """Last: it ends app.py. Its flags went through the command line, as a user's do."""
    client = httpx.Client(base_url=app_py["url"], timeout=60)
    client.post("/api/clear")
    client.post("/api/upload", files=[("files", (p.name, p.read_bytes(), "image/png")) for p in parts])
    entries = {e["name"]: e for e in _settled(client)["entries"]}
    assert {name: entries[name]["score"] for name in predicted} == pytest.approx(
        {name: score for name, (score, _) in predicted.items()}, rel=1e-6, abs=1e-7)
    [work] = app_py["temp"].glob("dhrclip-app-*")  # its own; the killed one's was removed at start
    assert list(work.rglob("upload.png"))
    # a client that never finishes its upload does not hold up the stop beyond the grace period
    host, port = app_py["url"].split("//")[1].rstrip("/").rsplit(":", 1)
    hanging = socket.create_connection((host, int(port)))
    hanging.sendall(f"POST /api/upload HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; "
                    f"boundary=x\r\nContent-Length: 1000000\r\n\r\n--x\r\n".encode())
    time.sleep(0.5)
    began = time.monotonic()
    app_py["proc"].send_signal(signal.SIGTERM)
    assert app_py["proc"].wait(60) == 128 + signal.SIGTERM
    assert time.monotonic() - began < SHUTDOWN_SECONDS + 10
    hanging.close()
    assert not work.exists()
