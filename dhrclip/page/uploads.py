"""The inspection page's uploads: what it accepts (``Limits``), the record of each uploaded file
(``Entry``), the names it is shown and stored under, and the checks an upload passes before it
is queued. Uploaded files are saved under names the server chooses; the user's name is only shown.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..data.images import IMAGE_SUFFIXES, image_shape
from ..detector.results import Outcome, Thresholds, map_file_name, table_row
from ..engine.figures import display_size
from ..errors import UserError

log = logging.getLogger(__name__)

SCORE_DIGITS = 4  # decimals of the scores the page shows, and of the image threshold it sets
_COPY_CHUNK = 1 << 20
_FORM_OVERHEAD = 2**20  # an upload request's multipart headers and boundaries, beyond its files
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell starting with these
_FILE_OVERHEAD = 4 * 4096  # an entry's folder and files take whole blocks


@dataclass(frozen=True)
class Limits:
    """What the page accepts. Pixels are checked from the file's header before it is decoded, so a
    small file that would inflate to gigabytes (a decompression bomb) is refused unopened."""

    max_file_bytes: int = 50 * 2**20
    max_pixels: int = 40_000_000
    max_images: int = 1000         # images queued or inspected at once
    files_per_request: int = 16    # the page sends larger selections in several requests
    max_work_bytes: int = 5 * 2**30  # disk the uploads and their results may take
    max_errors: int = 100          # refused files kept on the page (the oldest go first)

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
                "max_work_bytes": self.max_work_bytes,
                "request_file_bytes": self.request_file_bytes, "max_request_bytes": self.max_request_bytes}


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
    footprint: int = 0             # bytes of the work folder's budget it holds (its upload and results)

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
        outcome = (Outcome(self.score, self.map_max, self.grid)
                   if done and self.score is not None and self.map_max is not None else None)
        return table_row(self.name, outcome, self.error, Thresholds(image_t, pixel_t))


def safe_name(filename: str | None) -> str:
    """The last component of an uploaded file's name, without path separators or control characters."""
    name = "".join(ch for ch in Path((filename or "").replace("\\", "/")).name if ch.isprintable()).strip()
    return name if name not in ("", ".", "..") else "upload"


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``stem (2).png`` and so on when its map's name in the zip is taken (a second
    upload of one name; a.b.png and a_b.png share a_b_png.npy), so table rows and maps still pair."""
    path, k = Path(name), 1
    while map_file_name(Path(name)).as_posix() in taken:
        k += 1
        name = f"{path.stem} ({k}){path.suffix}"
    taken.add(map_file_name(Path(name)).as_posix())
    return name


def spreadsheet_safe(text: str) -> str:
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


def footprint(upload: Path) -> int:
    """Bytes an accepted upload takes in the work folder once inspected: the file, its float16 map
    and its figure's image and map at display size."""
    height, width = image_shape(upload)
    shown_h, shown_w = display_size(height, width)
    return upload.stat().st_size + 2 * height * width + 7 * shown_h * shown_w + _FILE_OVERHEAD


def receive(entry: Entry, handle: BinaryIO, limits: Limits) -> str:
    """Store an upload under its entry's folder, checking its type, bytes and pixels (from the
    header, before anything decodes it); why it is refused, or '' when it may be queued."""
    if Path(entry.name).suffix.lower() not in IMAGE_SUFFIXES:
        return f"not an image file: the page takes {', '.join(sorted(IMAGE_SUFFIXES))}"
    size = 0
    try:
        entry.folder.mkdir(parents=True, exist_ok=True)
        with open(entry.upload, "wb") as out:
            while chunk := handle.read(_COPY_CHUNK):
                size += len(chunk)
                if size > limits.max_file_bytes:
                    return f"larger than the limit of {_bytes(limits.max_file_bytes)} per image"
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
    if height * width > limits.max_pixels:
        return (f"{width}×{height} pixels ({_megapixels(height * width)}) is over the limit of "
                f"{_megapixels(limits.max_pixels)} per image")
    return ""

