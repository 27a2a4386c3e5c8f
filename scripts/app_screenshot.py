"""Draw docs/figures/app.png: the inspection page in headless Chromium, on the tests' tiny model.

The model is a small random-weight CLIP (``synthetic.tiny_clip``) whose prompts are trained a few
epochs on synthetic parts, so the figure shows the page at work, not what DHR-CLIP finds with
ViT-L weights. A few good parts are dropped as the few-shot reference (the sliders move to their
calibration), then two parts are inspected, one with a painted scratch, and the pixel threshold is
moved between their map maxima so that the scratch is outlined.

Usage: .venv/bin/python scripts/app_screenshot.py [--output docs/figures/app.png]
Needs the dev extra (selenium) and Chromium with its driver (Debian: chromium chromium-driver).
"""
from __future__ import annotations

import argparse
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from dhrclip.config import ModelConfig, RunOptions, TrainConfig
from dhrclip.data.indexing import mvtec_layout_index, write_meta
from dhrclip.data.synthetic import paint_defect, save_openai_format, synthetic_image, tiny_clip, write_mvtec_dataset
from dhrclip.engine.training import train

ROOT = Path(__file__).resolve().parent.parent
# The tests' tiny model (tests/conftest.py): global view 56, tiles of 70 on a 112 canvas, two taps.
TINY = dict(image_size=56, patch_image_size=70, target_image_size=112, features_list=(2, 4), dpam=3, depth=3,
            n_ctx=6, t_n_ctx=2)
EPOCHS = 4
PART = "weave"


def _write(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), rgb[..., ::-1])
    return path


def trained_checkpoint(work: Path) -> Path:
    """Prompts trained ``EPOCHS`` epochs on synthetic parts of two textures, with the tiny CLIP."""
    weights = save_openai_format(tiny_clip(seed=0), work / "tiny_openai.pt")
    data = write_mvtec_dataset(work / "data", [PART, "stripes"], n_good=4, n_defect=9, n_train=1, size=(96, 96),
                               seed=1)
    write_meta(data, mvtec_layout_index(data))
    config = TrainConfig(data_path=data, save_path=work / "checkpoint", epochs=EPOCHS,
                         run=RunOptions(batch_size=4, num_workers=0, device="cpu"))
    train(config, ModelConfig(pretrained=str(weights), **TINY))
    return work / "checkpoint"


def start_app(checkpoint: Path, work: Path) -> tuple[subprocess.Popen, str]:
    """app.py on a free port, and the address it prints."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--checkpoint_path", str(checkpoint), "--port",
                             "0", "--device", "cpu", "--batch_size", "4"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=work)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if found := re.search(r"the inspection page is at (\S+)", line):
            return proc, found.group(1)
    proc.kill()
    raise SystemExit("app.py did not start")


def chromium(work: Path) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
                 "--disable-background-networking", f"--user-data-dir={work / 'chromium'}", "--window-size=1440,1200"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)


def screenshot(url: str, good: list[Path], inspected: list[Path], output: Path, work: Path) -> None:
    driver = chromium(work)
    try:
        wait = WebDriverWait(driver, 120, poll_frequency=0.1)
        driver.get(url)
        wait.until(lambda d: "checkpoint" in d.find_element(By.ID, "model").text)
        driver.execute_script("document.getElementById('reference-panel').open = true")
        driver.find_element(By.ID, "reference-files").send_keys("\n".join(map(str, good)))
        wait.until(lambda d: d.find_element(By.ID, "image-number").get_attribute("value"))
        driver.find_element(By.ID, "files").send_keys("\n".join(map(str, inspected)))
        wait.until(lambda d: d.execute_script(
            "const f = [...document.querySelectorAll('img.figure')];"
            "return f.length === 2 && f.every(i => i.complete && i.naturalWidth > 0)"
            " && document.getElementById('progress').hidden"))
        # as a user would: the pixel threshold moved between the two parts' map maxima, to outline the scratch
        maxima = sorted(float(re.search(r"map maximum ([\d.]+)", e.text).group(1))
                        for e in driver.find_elements(By.CSS_SELECTOR, ".meta"))
        driver.execute_script("const n = document.getElementById('pixel-number'); n.value = arguments[0];"
                              "n.dispatchEvent(new Event('change'))", f"{sum(maxima) / 2:.3f}")
        wait.until(lambda d: d.execute_script(
            "const f = [...document.querySelectorAll('img.figure')];"
            "return f.every(i => i.complete && i.naturalWidth > 0 && i.src.includes(arguments[0]))",
            f"{sum(maxima) / 2:.3f}"))
        # the calibration's notice stays; the page's own note that the bank is being built goes
        driver.execute_script("const n = [...document.querySelectorAll('.notice')]; n.slice(0, -1).forEach("
                              "e => e.remove()); document.activeElement.blur(); window.scrollTo(0, 0)")
        output.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(output))
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "figures" / "app.png")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="app-screenshot-") as folder:
        work = Path(folder)
        checkpoint = trained_checkpoint(work)
        rng = np.random.default_rng(17)
        sheet = synthetic_image(PART, 960, 720, rng)  # one fabric: the parts are cut from it, so they match
        cuts = [sheet[240 * (k // 3):240 * (k // 3 + 1), 240 * (k % 3):240 * (k % 3 + 1)] for k in range(12)]
        good = [_write(work / "good" / f"good_{k}.png", cut) for k, cut in enumerate(cuts[:10])]
        scratched, _ = paint_defect(cuts[10], "scratch", rng)
        inspected = [_write(work / "parts" / "part_017.png", scratched),
                     _write(work / "parts" / "part_018.png", cuts[11])]
        proc, url = start_app(checkpoint, work)
        try:
            screenshot(url, good, inspected, args.output, work)
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"wrote {args.output} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
