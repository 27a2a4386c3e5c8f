"""The inspection page's work, without the web: uploads and their checks, one worker thread that
runs the detector, the results kept on disk, the reference bank, and what the page downloads.
``page/server.py`` serves it over HTTP; ``page/uploads.py`` holds what it accepts and
``page/worker.py`` the thread that runs the model.

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
import secrets
import shutil
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, BinaryIO

import cv2
import numpy as np
import open_clip

from ..config import RunOptions, page_run
from ..core.backbone import is_weights_path
from ..data.images import IMAGE_SUFFIXES, load_rgb
from ..detector.facade import DHRCLIP
from ..detector.results import NO_THRESHOLDS, Prediction, Thresholds, csv_text, map_file_name
from ..detector.thresholds import threshold_record
from ..engine.calibration import FEW_CALIBRATION_IMAGES, calibrate
from ..engine.figures import ColorScale, panels, prediction_panels, save_rgb, to_display, with_colour_bar
from ..errors import UserError
from ..files import save_npy
from .uploads import SCORE_DIGITS, Entry, Limits, footprint, receive, safe_name, spreadsheet_safe, unique_name
from .worker import Worker

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class AppSettings:
    """How images are run (as predict.py runs them), the thresholds the sliders start at, and
    what the page accepts."""

    run: RunOptions = field(default_factory=page_run)
    thresholds: Thresholds = NO_THRESHOLDS
    limits: Limits = field(default_factory=Limits)


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
        self._entries: dict[int, Entry] = {}
        self._names: set[str] = set()  # map names taken on the page since the last clear
        self._reserved = 0             # places held for uploads being received
        self._work_bytes = 0           # room of the work folder held by the entries (``Entry.footprint``)
        self._next_id = 1
        self._generation = 0           # one per clear: work for an earlier one is dropped
        self._thresholds: dict | None = None  # the latest thresholds the server set the sliders to
        self._threshold_seq = 0
        self._reference_seq = 0
        self._reference = ({"images": model.reference.images, "origin": "command line"}
                           if model.reference is not None else None)
        self._bank_file: Path | None = None
        self._worker = Worker()

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
            self._generation += 1
        self._worker.stop()

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
                entries.append(Entry(self._next_id, unique_name(safe_name(filename), self._names),
                                     batch / f"{self._next_id:06d}"))
                self._next_id += 1
        accepted: list[Entry] = []
        try:
            for k, (entry, (_, handle)) in enumerate(zip(entries, files)):
                if k >= room:
                    entry.status, entry.error = "error", (f"the page holds at most {self.limits.max_images} images "
                                                          f"at once; download the results and clear the page to go on")
                    continue
                problem = receive(entry, handle, self.limits) or self._hold_room(entry)
                if problem:
                    entry.status, entry.error = "error", problem
                    shutil.rmtree(entry.folder, ignore_errors=True)
                else:
                    accepted.append(entry)
        finally:
            with self._lock:
                self._reserved -= room
                cleared = generation != self._generation
                if cleared:
                    self._work_bytes -= sum(e.footprint for e in entries)
                else:
                    self._entries.update((e.id, e) for e in entries)
                    self._forget_old_errors()
        if cleared:  # while the files arrived
            for entry in entries:
                shutil.rmtree(entry.folder, ignore_errors=True)
            return []
        if accepted:
            ids = [e.id for e in accepted]
            self._worker.submit(lambda: self._predict(generation, ids))
        return [e.view(None, None, self._run) for e in entries]

    def _hold_room(self, entry: Entry) -> str:
        """Hold the work folder's room for a received upload and its results; why there is none,
        or ''. The page's own budget is checked, and the disk's free space."""
        need = footprint(entry.upload)
        budget = self.limits.max_work_bytes
        with self._lock:
            if self._work_bytes + need > budget:
                return (f"the page's work folder is full ({self._work_bytes / 2**30:.2f} of {budget / 2**30:.2f} GB "
                        f"held); download the results and clear the page to go on")
            free = shutil.disk_usage(self.folder).free
            if need > free:
                return f"the server's disk is full ({free / 2**20:.0f} MB free); clear the page to go on"
            self._work_bytes += need
            entry.footprint = need
        return ""

    def _release(self, entries: list[Entry]) -> None:
        """Remove entries' files and give back their room (call holding the lock)."""
        for entry in entries:
            shutil.rmtree(entry.folder, ignore_errors=True)
            self._work_bytes -= entry.footprint
            entry.footprint = 0

    def _forget_old_errors(self) -> None:
        """Keep at most ``max_errors`` refused files on the page, the newest (call holding the lock)."""
        errors = [i for i, e in self._entries.items() if e.status == "error"]
        for i in errors[:max(0, len(errors) - self.limits.max_errors)]:
            del self._entries[i]

    def set_reference(self, files: list[tuple[str | None, BinaryIO]]) -> str:
        """Save good images and queue building the bank from them; '' or why they are refused."""
        if not files:
            return "no reference images were uploaded"
        with self._lock:
            self._reference_seq += 1
            folder = self.folder / f"reference{self._reference_seq}"
        taken: set[str] = set()
        entries = [Entry(0, unique_name(safe_name(filename), taken), folder / f"{k:04d}")
                   for k, (filename, _) in enumerate(files)]
        problems = [f"{e.name}: {problem}" for e, (_, handle) in zip(entries, files)
                    if (problem := receive(e, handle, self.limits))]
        if problems:
            shutil.rmtree(folder, ignore_errors=True)
            return "reference refused; " + "; ".join(problems)
        self._worker.submit(lambda: self._use_reference(folder, entries))
        return ""

    def drop_reference(self) -> None:
        """Queue the return to the startup detector (with its command-line bank, if any)."""
        self._worker.submit(self._drop_reference)

    def clear(self) -> None:
        """Forget every result and queued image; their files go once the running job is over."""
        with self._lock:
            old = self.folder / f"batch{self._generation}"
            self._generation += 1
            self._work_bytes -= sum(e.footprint for e in self._entries.values())
            self._entries.clear()
            self._names.clear()
        self._worker.submit(lambda: shutil.rmtree(old, ignore_errors=True))

    # ---- the worker ----------------------------------------------------------------------------
    def _predict(self, generation: int, ids: list[int]) -> None:
        with self._lock:
            if generation != self._generation:
                return
            entries = [self._entries[i] for i in ids if i in self._entries]
            model = self._model
        try:
            results = model.iter_predictions([e.upload for e in entries], self.settings.run, True, desc="inspecting")
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
                        self._release([entry])
                        self._forget_old_errors()
        finally:  # a failed batch (a full disk, say) must not leave the page waiting, nor keep its files
            with self._lock:
                failed = [entry for entry in entries if entry.status == "queued"]
                for entry in failed:
                    entry.status, entry.error = "error", "not inspected: the batch failed (see the message above)"
                for entry in entries:
                    if entry.rerun:  # its earlier result stays, marked as such
                        entry.rerun = False
                        entry.note = "the previous detector's result: running it again failed (see the message above)"
                if generation == self._generation:
                    self._release(failed)
                    self._forget_old_errors()

    def _store(self, entry: Entry, result: Prediction) -> dict:
        """Keep a result's map (float16, as predict.py's maps/) and what its figures are drawn from:
        the image and that saved map at display size, as predict.py draws them."""
        amap = result.anomaly_map.astype(np.float16)
        save_npy(entry.folder / "map.npy", amap)
        image = np.asarray(load_rgb(entry.upload, self.settings.run.bit_depth), dtype=np.uint8)
        shown, small = to_display(image, amap.astype(np.float32))
        save_rgb(entry.folder / "shown.png", shown)
        save_npy(entry.folder / "shown_map.npy", small)
        return {"status": "done", "score": result.score, "map_min": float(result.anomaly_map.min()),
                "map_max": result.map_max, "grid": tuple(result.grid)}

    def _use_reference(self, folder: Path, entries: list[Entry]) -> None:
        run = self.settings.run
        paths = [e.upload for e in entries]
        self._worker.stage(f"building the reference bank from {len(paths)} good image(s)")
        try:
            few = self._startup_model.with_reference(paths, run)
            found = None
            if len(paths) >= 2:
                self._worker.stage("calibrating the thresholds on the reference images, each against the others")
                found = calibrate(few, str(folder), run, skip_errors=False)
            # what the page hands out (the bank, threshold files) names the images as uploaded and
            # the weights by file name: the server's folders stay its own
            shared = replace(few.bank, config=few.bank.config.shared(), sources=[e.name for e in entries])
            few = self._startup_model.with_reference(shared, run)
            few.bank.save(folder / "reference.safetensors")
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
            self._worker.notice("One reference image: thresholds are calibrated with two or more (each is scored "
                         "against the others).")
        elif len(paths) < FEW_CALIBRATION_IMAGES:
            self._worker.notice(f"Thresholds calibrated on {len(paths)} good images are uncertain; "
                         f"{FEW_CALIBRATION_IMAGES} or more are advised.")
        self._rerun()

    def _drop_reference(self) -> None:
        start_at = self.settings.thresholds
        with self._lock:
            if self._bank_file is None:
                return
            previous = self._bank_file
            self._model, self._bank_file = self._startup_model, None
            start = self._startup_model.reference
            self._reference = {"images": start.images, "origin": "command line"} if start is not None else None
            self._set_thresholds(start_at.image, start_at.pixel,
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
            self._worker.submit(lambda: self._predict(generation, [e.id for e in again]))

    def _set_thresholds(self, image_t: float | None, pixel_t: float | None, text: str) -> None:
        """Move the page's sliders (called with the lock held)."""
        self._threshold_seq += 1
        self._thresholds = {"seq": self._threshold_seq, "image_threshold": image_t, "pixel_threshold": pixel_t,
                            "text": text}

    # ---- what the page reads -------------------------------------------------------------------
    def info(self) -> dict:
        model = self._startup_model
        s = self.settings
        return {"checkpoint": Path(model.checkpoint).name if model.checkpoint else None,
                "backbone": describe_backbone(model), "grid": s.run.grid, "max_tiles": s.run.max_tiles,
                "thresholds": {"image": s.thresholds.image, "pixel": s.thresholds.pixel},
                "limits": self.limits.to_dict(), "suffixes": sorted(IMAGE_SUFFIXES), "score_digits": SCORE_DIGITS}

    def state(self, image_t: float | None, pixel_t: float | None) -> dict:
        """Every entry at these thresholds, the queue's progress, the colour range of the maps,
        the reference, the thresholds the server last set and the recent notices."""
        with self._lock:
            entries = [e.view(image_t, pixel_t, self._run) for e in self._entries.values()]
            done = [e for e in self._entries.values() if e.status == "done"]
            lows = [e.map_min for e in done if e.map_min is not None]
            highs = [e.map_max for e in done if e.map_max is not None]
            scale = {"low": min(lows), "high": max(highs)} if lows and highs else None
            state = {**self._worker.status(), "reference": self._reference, "thresholds": self._thresholds,
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
        image = cv2.imread(str(entry.folder / "shown.png"), cv2.IMREAD_COLOR)
        try:
            amap = np.load(entry.folder / "shown_map.npy")
        except (OSError, ValueError):  # cleared meanwhile
            return None
        if image is None:
            return None
        shown = image[..., ::-1]
        scale = ColorScale.around(low, high, pixel_t)
        body = with_colour_bar(panels(prediction_panels(np.ascontiguousarray(shown), amap, scale, pixel_t)), scale)
        return cv2.imencode(".png", body[..., ::-1])[1].tobytes()

    def csv_text(self, image_t: float | None, pixel_t: float | None) -> str:
        """predict.py's predictions.csv for the finished entries, decided at these thresholds; its
        text cells are kept from running as spreadsheet formulas."""
        with self._lock:
            rows = [e.row(image_t, pixel_t) for e in self._entries.values() if e.status != "queued"]
        return csv_text([{**r, "path": spreadsheet_safe(r["path"]), "error": spreadsheet_safe(r["error"])}
                         for r in rows])

    def maps_zip(self) -> IO[bytes] | None:
        """A zip of maps/NAME_png.npy (float16, as predict.py writes them) in a file without a name,
        gone once closed however the download ends; None before any result."""
        with self._lock:
            done = [e for e in self._entries.values() if e.status == "done"]
        if not done:
            return None
        handle = tempfile.TemporaryFile(dir=self.folder)  # noqa: SIM115 - the download closes it
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
        with self._lock:
            inspected = sum(e.status == "done" for e in self._entries.values())
            model = self._model
        return threshold_record(model.signature(self.settings.run).shared(), Thresholds(image_t, pixel_t),
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
