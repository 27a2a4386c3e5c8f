"""The inspection page's work, without the web: uploads and their checks, one worker thread that
runs the detector, the results kept on disk, the reference bank, and what the page downloads.
``dhrclip/app.py`` serves it over HTTP.

Uploaded files are saved under names the server chooses (the user's name is only shown), checked
(type, bytes, pixels) before anything decodes them, and queued; the worker runs them through the
detector with ``iter_predictions``, the path predict.py takes, with its grid, batch size and
thresholds, so a file gets the same score and map here as there. Each result keeps its map on disk;
figures and decisions are made at the thresholds the page asks for, so moving a slider re-draws
outlines and re-decides without running the model again. Good images uploaded as the few-shot
reference become the bank, and the thresholds are calibrated on them leave-one-out.
"""
from __future__ import annotations

import logging
import queue
import secrets
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

import cv2
import numpy as np
import open_clip

from ..core.backbone import is_weights_path
from ..detector.facade import DHRCLIP
from ..errors import UserError
from ..files import atomic_write
from ..data.images import image_shape, load_rgb
from ..data.indexing import IMAGE_SUFFIXES
from ..detector.inference import Prediction
from ..engine.prediction import FEW_CALIBRATION_IMAGES, calibrate, csv_text, map_file_name, table_row, threshold_record
from ..engine.figures import ColorScale, panels, prediction_panels, to_display, with_colour_bar

log = logging.getLogger(__name__)

SCORE_DIGITS = 4  # decimals of the scores the page shows, and of the image threshold it sets
_COPY_CHUNK = 1 << 20
_FORM_OVERHEAD = 2**20  # an upload request's multipart headers and boundaries, beyond its files
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell starting with these


@dataclass(frozen=True)
class Limits:
    """What the page accepts. Pixels are checked from the file's header before it is decoded, so a
    small file that would inflate to gigabytes (a decompression bomb) is refused unopened."""

    max_file_bytes: int = 50 * 2**20
    max_pixels: int = 40_000_000
    max_images: int = 1000         # images queued or inspected at once
    files_per_request: int = 16    # the page sends larger selections in several requests

    @property
    def request_file_bytes(self) -> int:
        """The files of one upload request together: a few at the size limit."""
        return 4 * self.max_file_bytes

    @property
    def max_request_bytes(self) -> int:
        """One upload request: its files plus the form's own overhead."""
        return self.request_file_bytes + _FORM_OVERHEAD

    def to_dict(self) -> dict:
        return {"max_file_bytes": self.max_file_bytes, "max_pixels": self.max_pixels,
                "max_images": self.max_images, "files_per_request": self.files_per_request,
                "request_file_bytes": self.request_file_bytes, "max_request_bytes": self.max_request_bytes}


@dataclass(frozen=True)
class AppSettings:
    """How images are run (as predict.py's flags) and the thresholds the sliders start at.
    No DataLoader workers by default: forking from the server's threads can deadlock."""

    grid: str = "auto"
    max_tiles: int = 9
    batch_size: int = 8
    num_workers: int | str = 0
    bit_depth: int | None = None
    image_threshold: float | None = None
    pixel_threshold: float | None = None
    limits: Limits = field(default_factory=Limits)


@dataclass
class Entry:
    """One uploaded file and, once the worker has run it, its result."""

    id: int
    name: str                      # shown, and its path in the table and the maps zip: unique on the page
    folder: Path                   # its upload, map and display arrays
    status: str = "queued"         # queued, done or error
    error: str = ""
    score: float | None = None
    map_min: float | None = None
    map_max: float | None = None
    grid: tuple[int, int] = (0, 0)
    version: int = 0               # results stored so far: a figure's address names it, so no cache serves an old one
    rerun: bool = False            # a result for the changed detector is on its way; this one is shown meanwhile
    note: str = ""                 # why the result shown is not the current detector's

    @property
    def upload(self) -> Path:
        """The file as stored: a name the server chose, with the upload's suffix (readers go by it)."""
        return self.folder / f"upload{Path(self.name).suffix.lower()}"

    def words(self, text: str) -> str:
        """A library message about the stored file, naming it as the user knows it."""
        return text.replace(str(self.upload), self.name)

    def view(self, image_t: float | None, pixel_t: float | None, run: str) -> dict:
        """What the page shows of it at the given thresholds; ``run`` tells this server's results
        apart from an earlier one's in the figure's address."""
        done = self.status == "done"
        return {"id": self.id, "name": self.name, "status": self.status, "error": self.error,
                "score": self.score, "score_text": f"{self.score:.{SCORE_DIGITS}f}" if done else "",
                "map_max": self.map_max, "rows": self.grid[0], "cols": self.grid[1],
                "decision": self.row(image_t, pixel_t)["decision"], "version": f"{run}.{self.version}",
                "rerun": self.rerun, "note": self.note}

    def row(self, image_t: float | None, pixel_t: float | None) -> dict:
        """Its row of predict.py's predictions.csv, under its name on the page."""
        done = self.status == "done"
        return table_row(self.name, self.score if done else None, self.map_max if done else None,
                         self.grid if done else None, self.error, image_t, pixel_t)


def safe_name(filename: str | None) -> str:
    """The last component of an uploaded file's name, without path separators or control characters."""
    name = "".join(ch for ch in Path((filename or "").replace("\\", "/")).name if ch.isprintable()).strip()
    return name if name not in ("", ".", "..") else "upload"


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``stem (2).png`` and so on when its map's name in the zip is taken (a second
    upload of one name; a.b.png and a_b.png share a_b_png.npy), so table rows and maps still pair."""
    path, k = Path(name), 1
    while map_file_name(Path(name)).as_posix() in taken:
        k += 1
        name = f"{path.stem} ({k}){path.suffix}"
    taken.add(map_file_name(Path(name)).as_posix())
    return name


def _spreadsheet_safe(text: str) -> str:
    """A text cell that a spreadsheet shows as text rather than runs as a formula."""
    return f"'{text}" if text.startswith(_FORMULA_START) else text


def _bytes(size: int) -> str:
    return f"{size / 2**20:.0f} MB" if size >= 2**20 else f"{size / 2**10:.0f} KB"


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} megapixels"


def _reason(exc: UserError) -> str:
    """The library's own words for why a file could not be read, without the stored file's path."""
    cause = exc.__cause__
    return str(cause) if cause is not None else str(exc)


def _save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array))  # readers (figures, the zip) never see half a file


def _save_png(path: Path, rgb: np.ndarray) -> None:
    ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise OSError(f"could not encode {path.name}")
    atomic_write(path, lambda f: f.write(png.tobytes()))


def describe_backbone(model: DHRCLIP) -> str:
    """What was loaded, read off the model: the weights (tag or file name) and, when a weights file
    brought another architecture than ``config.model`` names, the vision tower actually built."""
    config = model.config
    visual = model.model.clip.visual
    built = (len(visual.transformer.resblocks), visual.conv1.out_channels, visual.conv1.kernel_size[0])
    named = (open_clip.get_model_config(config.model) or {}).get("vision_cfg", {})
    nominal = (named.get("layers"), named.get("width"), named.get("patch_size"))
    weights = ("random weights" if config.pretrained.lower() == "none" else
               f"weights {Path(config.pretrained).name if is_weights_path(config.pretrained) else config.pretrained}")
    if built == nominal:
        return f"{config.model}, {weights}"
    layers, width, patch = built
    return f"a ViT of {layers} layers, width {width}, patch {patch} from {weights} (not {config.model})"


class Inspector:
    """The page's state: uploaded images, their results, the reference bank, and the one worker
    thread that runs the model (requests never do; they only read what it has stored)."""

    def __init__(self, model: DHRCLIP, settings: AppSettings, folder: Path) -> None:
        self.settings = settings
        self.limits = settings.limits
        self.folder = Path(folder)
        self._startup_model = model
        self._model = model
        self._run = secrets.token_hex(4)
        self._lock = threading.Lock()
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._pending = 0              # jobs queued or running
        self._stopping = False
        self._entries: dict[int, Entry] = {}
        self._names: set[str] = set()  # map names taken on the page since the last clear
        self._reserved = 0             # places held for uploads being received
        self._next_id = 1
        self._generation = 0           # one per clear: work for an earlier one is dropped
        self._stage = ""
        self._notices: list[dict] = []
        self._notice_seq = 0
        self._thresholds: dict | None = None  # the latest thresholds the server set the sliders to
        self._threshold_seq = 0
        self._reference_seq = 0
        self._reference = ({"images": model.reference.images, "origin": "command line"}
                           if model.reference is not None else None)
        self._bank_file: Path | None = None
        self._worker = threading.Thread(target=self._work, name="dhrclip-inspection", daemon=True)

    @property
    def model(self) -> DHRCLIP:
        """The detector results are computed with: the startup one, or it with an uploaded bank."""
        return self._model

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        """End the worker once its running job is over (queued ones are dropped), so nothing writes
        to the work folder after this returns."""
        with self._lock:
            self._stopping = True
            self._generation += 1
        self._jobs.put(None)
        if self._worker.is_alive():
            self._worker.join(1.0)
            if self._worker.is_alive():
                log.info("waiting for the running batch to finish")
                self._worker.join()

    # ---- uploads -------------------------------------------------------------------------------
    def add_images(self, files: list[tuple[str | None, BinaryIO]]) -> list[dict]:
        """Save, check and queue uploaded files; a file that fails a check gets an error entry
        saying why, and the others go on. Places are held before the files are received, so
        uploads arriving together cannot pass ``max_images`` between them."""
        with self._lock:
            generation = self._generation
            held = sum(e.status != "error" for e in self._entries.values()) + self._reserved
            room = max(0, min(len(files), self.limits.max_images - held))
            self._reserved += room
            batch = self.folder / f"batch{generation}"
            entries = []
            for filename, _ in files:
                entries.append(Entry(self._next_id, _unique(safe_name(filename), self._names),
                                     batch / f"{self._next_id:06d}"))
                self._next_id += 1
        accepted: list[Entry] = []
        try:
            for k, (entry, (_, handle)) in enumerate(zip(entries, files)):
                if k >= room:
                    entry.status, entry.error = "error", (f"the page holds at most {self.limits.max_images} images "
                                                          f"at once; download the results and clear the page to go on")
                    continue
                problem = self._receive(entry, handle)
                if problem:
                    entry.status, entry.error = "error", problem
                    shutil.rmtree(entry.folder, ignore_errors=True)
                else:
                    accepted.append(entry)
        finally:
            with self._lock:
                self._reserved -= room
                cleared = generation != self._generation
                if not cleared:
                    self._entries.update((e.id, e) for e in entries)
        if cleared:  # while the files arrived
            for entry in entries:
                shutil.rmtree(entry.folder, ignore_errors=True)
            return []
        if accepted:
            ids = [e.id for e in accepted]
            self._queue(lambda: self._predict(generation, ids))
        return [e.view(None, None, self._run) for e in entries]

    def _receive(self, entry: Entry, handle: BinaryIO) -> str:
        """Store an upload; why it is refused, or '' when it may be queued."""
        if Path(entry.name).suffix.lower() not in IMAGE_SUFFIXES:
            return f"not an image file: the page takes {', '.join(sorted(IMAGE_SUFFIXES))}"
        size = 0
        try:
            entry.folder.mkdir(parents=True, exist_ok=True)
            with open(entry.upload, "wb") as out:
                while chunk := handle.read(_COPY_CHUNK):
                    size += len(chunk)
                    if size > self.limits.max_file_bytes:
                        return f"larger than the limit of {_bytes(self.limits.max_file_bytes)} per image"
                    out.write(chunk)
        except OSError as exc:
            log.warning("could not store the upload %s: %s", entry.name, exc)
            return f"could not be stored on the server ({exc.strerror or type(exc).__name__})"
        if size == 0:
            return "an empty file"
        try:
            height, width = image_shape(entry.upload)
        except UserError as exc:
            return entry.words(f"not a readable image ({_reason(exc)})")
        if height * width > self.limits.max_pixels:
            return (f"{width}×{height} pixels ({_megapixels(height * width)}) is over the limit of "
                    f"{_megapixels(self.limits.max_pixels)} per image")
        return ""

    def set_reference(self, files: list[tuple[str | None, BinaryIO]]) -> str:
        """Save good images and queue building the bank from them; '' or why they are refused."""
        if not files:
            return "no reference images were uploaded"
        with self._lock:
            self._reference_seq += 1
            folder = self.folder / f"reference{self._reference_seq}"
        taken: set[str] = set()
        entries = [Entry(0, _unique(safe_name(filename), taken), folder / f"{k:04d}")
                   for k, (filename, _) in enumerate(files)]
        problems = [f"{e.name}: {problem}" for e, (_, handle) in zip(entries, files)
                    if (problem := self._receive(e, handle))]
        if problems:
            shutil.rmtree(folder, ignore_errors=True)
            return "reference refused; " + "; ".join(problems)
        self._queue(lambda: self._use_reference(folder, entries))
        return ""

    def drop_reference(self) -> None:
        """Queue the return to the startup detector (with its command-line bank, if any)."""
        self._queue(self._drop_reference)

    def clear(self) -> None:
        """Forget every result and queued image; their files go once the running job is over."""
        with self._lock:
            old = self.folder / f"batch{self._generation}"
            self._generation += 1
            self._entries.clear()
            self._names.clear()
        self._queue(lambda: shutil.rmtree(old, ignore_errors=True))

    # ---- the worker ----------------------------------------------------------------------------
    def _queue(self, job: Callable[[], None]) -> None:
        with self._lock:
            self._pending += 1
        self._jobs.put(job)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                with self._lock:
                    stopping = self._stopping
                if not stopping:
                    job()
            except UserError as exc:
                self._notice(str(exc))
            except Exception as exc:  # a bug must not end the worker: the page would wait forever
                log.exception("inspection job failed")
                self._notice(f"internal error ({type(exc).__name__}: {exc}); see the server's log")
            finally:
                with self._lock:
                    self._stage = ""
                    self._pending -= 1  # after any job this one queued was counted: no idle moment between

    def _predict(self, generation: int, ids: list[int]) -> None:
        with self._lock:
            if generation != self._generation:
                return
            entries = [self._entries[i] for i in ids if i in self._entries]
            model = self._model
        s = self.settings
        try:
            results = model.iter_predictions([e.upload for e in entries], s.batch_size, s.num_workers, "inspecting",
                                             s.bit_depth, True, s.grid, s.max_tiles)
            for k, result in results:
                entry = entries[k]
                update = ({"status": "error", "error": entry.words(result)} if isinstance(result, str) else
                          self._store(entry, result))
                with self._lock:
                    if generation != self._generation:
                        return
                    for key, value in update.items():
                        setattr(entry, key, value)
                    entry.version += 1
                    entry.rerun, entry.note = False, ""
                if entry.status == "error":  # nothing of it is shown: its files go now
                    shutil.rmtree(entry.folder, ignore_errors=True)
        finally:  # a failed batch must not leave the page waiting for its images
            with self._lock:
                for entry in entries:
                    if entry.status == "queued":
                        entry.status, entry.error = "error", "not inspected: the batch failed (see the message above)"
                    elif entry.rerun:  # its earlier result stays, marked as such
                        entry.rerun = False
                        entry.note = "the previous detector's result: running it again failed (see the message above)"

    def _store(self, entry: Entry, result: Prediction) -> dict:
        """Keep a result's map (float16, as predict.py's maps/) and what its figures are drawn from:
        the image and that saved map at display size, as predict.py draws them."""
        amap = result.anomaly_map.astype(np.float16)
        _save_npy(entry.folder / "map.npy", amap)
        image = np.asarray(load_rgb(entry.upload, self.settings.bit_depth), dtype=np.uint8)
        shown, small = to_display(image, amap.astype(np.float32))
        _save_png(entry.folder / "shown.png", shown)
        _save_npy(entry.folder / "shown_map.npy", small)
        return {"status": "done", "score": result.score, "map_min": float(result.anomaly_map.min()),
                "map_max": result.map_max, "grid": tuple(result.grid)}

    def _use_reference(self, folder: Path, entries: list[Entry]) -> None:
        s = self.settings
        paths = [e.upload for e in entries]
        with self._lock:
            self._stage = f"building the reference bank from {len(paths)} good image(s)"
        try:
            few = self._startup_model.with_reference(paths, s.grid, s.max_tiles, s.batch_size, s.num_workers)
            found = None
            if len(paths) >= 2:
                with self._lock:
                    self._stage = "calibrating the thresholds on the reference images, each against the others"
                found = calibrate(few, str(folder), 1.0, s.batch_size, s.num_workers, s.bit_depth, False, None,
                                  s.grid, s.max_tiles)
            few.reference.save(folder / "reference.safetensors")
        except UserError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            text = str(exc)
            for entry in entries:
                text = entry.words(text)
            raise UserError(text) from exc
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        with self._lock:
            previous = self._bank_file
            self._model, self._bank_file = few, folder / "reference.safetensors"
            self._reference = {"images": len(paths), "origin": "uploaded"}
            if found is not None:
                self._set_thresholds(found["image_threshold"], found["pixel_threshold"],
                                     f"Thresholds calibrated on {len(paths)} reference images, each scored against "
                                     f"the others: no good image is flagged.")
        if previous is not None:  # its bank and images: the calibration above replaced its thresholds
            shutil.rmtree(previous.parent, ignore_errors=True)
        if found is None:
            self._notice("One reference image: thresholds are calibrated with two or more (each is scored "
                         "against the others).")
        elif len(paths) < FEW_CALIBRATION_IMAGES:
            self._notice(f"Thresholds calibrated on {len(paths)} good images are uncertain; "
                         f"{FEW_CALIBRATION_IMAGES} or more are advised.")
        self._rerun()

    def _drop_reference(self) -> None:
        s = self.settings
        with self._lock:
            if self._bank_file is None:
                return
            previous = self._bank_file
            self._model, self._bank_file = self._startup_model, None
            start = self._startup_model.reference
            self._reference = {"images": start.images, "origin": "command line"} if start is not None else None
            self._set_thresholds(s.image_threshold, s.pixel_threshold,
                                 "The uploaded reference is removed, and with it its calibration: the thresholds "
                                 "are back to those the page started with.")
        shutil.rmtree(previous.parent, ignore_errors=True)
        self._rerun()

    def _rerun(self) -> None:
        """Queue the results already shown again, for the detector that changed; each stays shown
        until its new one is stored."""
        with self._lock:
            generation = self._generation
            again = [e for e in self._entries.values() if e.status == "done"]
            for entry in again:
                entry.rerun = True
        if again:
            self._queue(lambda: self._predict(generation, [e.id for e in again]))

    def _set_thresholds(self, image_t: float | None, pixel_t: float | None, text: str) -> None:
        """Move the page's sliders (called with the lock held)."""
        self._threshold_seq += 1
        self._thresholds = {"seq": self._threshold_seq, "image_threshold": image_t, "pixel_threshold": pixel_t,
                            "text": text}

    def _notice(self, text: str) -> None:
        with self._lock:
            self._notice_seq += 1
            self._notices = [*self._notices[-19:], {"seq": self._notice_seq, "text": text}]

    # ---- what the page reads -------------------------------------------------------------------
    def info(self) -> dict:
        model = self._startup_model
        s = self.settings
        return {"checkpoint": Path(model.checkpoint).name if model.checkpoint else None,
                "backbone": describe_backbone(model), "grid": s.grid, "max_tiles": s.max_tiles,
                "thresholds": {"image": s.image_threshold, "pixel": s.pixel_threshold},
                "limits": self.limits.to_dict(), "suffixes": sorted(IMAGE_SUFFIXES), "score_digits": SCORE_DIGITS}

    def state(self, image_t: float | None, pixel_t: float | None) -> dict:
        """Every entry at these thresholds, the queue's progress, the colour range of the maps,
        the reference, the thresholds the server last set and the recent notices."""
        with self._lock:
            entries = [e.view(image_t, pixel_t, self._run) for e in self._entries.values()]
            done = [e for e in self._entries.values() if e.status == "done"]
            scale = ({"low": min(e.map_min for e in done), "high": max(e.map_max for e in done)} if done else None)
            state = {"stage": self._stage, "working": self._pending > 0, "reference": self._reference,
                     "thresholds": self._thresholds, "notices": list(self._notices),
                     "bank": self._bank_file is not None}
        counts = {kind: sum(e["decision"] == kind for e in entries) for kind in ("anomalous", "normal")}
        return {**state, "entries": entries, "scale": scale,
                "score_max": max((e["score"] for e in entries if e["status"] == "done"), default=None),
                "progress": {"total": len(entries),
                             "queued": sum(e["status"] == "queued" or e["rerun"] for e in entries),
                             "errors": sum(e["status"] == "error" for e in entries), **counts}}

    def _done(self, entry_id: int) -> Entry | None:
        with self._lock:
            entry = self._entries.get(entry_id)
            return entry if entry is not None and entry.status == "done" else None

    def figure_png(self, entry_id: int, low: float, high: float, pixel_t: float | None) -> bytes | None:
        """input | heatmap | outline with the colour bar, as predict.py draws them, in PNG."""
        entry = self._done(entry_id)
        if entry is None:
            return None
        try:
            shown = cv2.imread(str(entry.folder / "shown.png"), cv2.IMREAD_COLOR)[..., ::-1]
            amap = np.load(entry.folder / "shown_map.npy")
        except (OSError, TypeError, ValueError):  # cleared meanwhile
            return None
        scale = ColorScale.around(low, high, pixel_t)
        body = with_colour_bar(panels(prediction_panels(np.ascontiguousarray(shown), amap, scale, pixel_t)), scale)
        return cv2.imencode(".png", body[..., ::-1])[1].tobytes()

    def csv_text(self, image_t: float | None, pixel_t: float | None) -> str:
        """predict.py's predictions.csv for the finished entries, decided at these thresholds; its
        text cells are kept from running as spreadsheet formulas."""
        with self._lock:
            rows = [e.row(image_t, pixel_t) for e in self._entries.values() if e.status != "queued"]
        return csv_text([{**r, "path": _spreadsheet_safe(r["path"]), "error": _spreadsheet_safe(r["error"])}
                         for r in rows])

    def maps_zip(self) -> IO[bytes] | None:
        """A zip of maps/NAME_png.npy (float16, as predict.py writes them) in a file without a name,
        gone once closed however the download ends; None before any result."""
        with self._lock:
            done = [e for e in self._entries.values() if e.status == "done"]
        if not done:
            return None
        handle = tempfile.TemporaryFile(dir=self.folder)
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
            for entry in done:
                try:
                    data = (entry.folder / "map.npy").read_bytes()
                except FileNotFoundError:  # cleared meanwhile
                    continue
                archive.writestr(f"maps/{map_file_name(Path(entry.name)).as_posix()}", data)
        handle.seek(0)
        return handle

    def threshold_file(self, image_t: float, pixel_t: float | None) -> dict:
        """A threshold.json that predict.py, export.py and this page accept with the same checkpoint,
        settings, grid and reference."""
        s = self.settings
        with self._lock:
            inspected = sum(e.status == "done" for e in self._entries.values())
            model = self._model
        return threshold_record(model, image_t, pixel_t, s.grid, s.max_tiles,
                                rule="set on the inspection page", images_inspected=inspected)

    def bank(self) -> IO[bytes] | None:
        """The uploaded reference as a bank file (predict.py --reference), open, so replacing or
        removing the bank meanwhile cannot cut the download short; None without one."""
        with self._lock:
            if self._bank_file is None:
                return None
            try:
                return open(self._bank_file, "rb")
            except FileNotFoundError:
                return None
