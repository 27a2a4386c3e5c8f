"""The zero-shot benchmark suite: one checkpoint tested on every dataset found under a data root,
reported in one table laid out like the literature's (datasets as rows, industrial and medical
blocks, a mean row per block; image AUROC and AP, pixel AUROC and AUPRO as columns).

``DATA_ROOT/<name>`` holds each dataset under its generator's name (``mvtec``,
``kvasir``, ...). A dataset without a meta.json is indexed first; one with a
meta.json is tested as indexed (``reindex`` rebuilds it). Each dataset's
results.json and log.txt go to ``save_path/<name>/``; a dataset that fails is
reported with its error and the suite goes on; with ``k_shot``, a dataset without
normal training images is not applicable. suite.json and suite.md hold the
combined table; absent datasets are listed as absent.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

from tabulate import tabulate

from ..config import EvalConfig
from ..data.datasets import DATASETS, DOMAINS, Dataset
from ..data.indexing import write_meta
from ..detector.facade import DHRCLIP
from ..errors import UserError
from ..files import save_json
from .distributed import gather_all, world
from .evaluation import evaluate, over_defined, protocol_header

log = logging.getLogger(__name__)

COLUMNS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_aupro")
HEADERS = ("dataset", "image AUROC", "image AP", "pixel AUROC", "pixel AUPRO")


def prepare(spec: Dataset, folder: Path, reindex: bool) -> tuple[str, dict | None]:
    """Index ``folder`` unless it has a meta.json (or ``reindex``): which index is used, and its
    contents (None when an existing file cannot be parsed: the test reports that properly).

    Every process takes the same branch (rank 0's view of the folder) and reads or
    builds the index, so an error stops them all alike; rank 0 writes the file and
    all learn whether it could."""
    meta_file = folder / "meta.json"
    existing = gather_all(meta_file.is_file())[0] and not reindex
    if existing:
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            meta = None
        return f"existing {meta_file}", meta if isinstance(meta, dict) else None
    meta = spec.index(folder, None)
    failure = None
    if world().is_main:
        try:
            write_meta(folder, meta)
        except OSError as exc:
            failure = f"cannot write {meta_file} ({exc}); index it where you can write, or make the folder writable"
    failure = gather_all(failure)[0]
    if failure:
        raise UserError(failure)
    return f"indexed by generate_dataset_json/{spec.name}.py", meta


def _check_origin(spec: Dataset, folder: Path, meta: dict | None) -> list[str]:
    """Check an index against the dataset it is tested as: refused when another dataset's
    generator wrote it (two names, one folder), a warning when another tool did (indexes of
    other projects pair masks by position and binarise JPEG masks above 0), and a note for the
    table when it indexes some classes only."""
    info = (meta or {}).get("info")
    info = info if isinstance(info, dict) else {}
    written_for = info.get("dataset")
    if written_for in DATASETS and written_for != spec.name:
        raise UserError(f"{folder / 'meta.json'} indexes {written_for}, not {spec.name}: the folder holds another "
                        f"dataset, or both names point at one folder; point {spec.name} at its own folder (for a "
                        f"bundle such as TestDataset/, the sub-folder of {spec.title}), or --reindex")
    if meta is not None and written_for != spec.name and world().is_main:
        log.warning("%s was not written by generate_dataset_json/%s.py: its masks may be paired or binarised "
                    "differently; --reindex rebuilds it", folder / "meta.json", spec.name)
    if info.get("classes"):
        return [f"indexed for the classes {', '.join(info['classes'])} only; --reindex indexes them all"]
    return []


def _has_train_images(meta: dict | None) -> bool:
    """Whether the index's train section lists normal images (what k_shot draws from); an index
    that cannot be read is left for the test to report."""
    if meta is None:
        return True
    try:
        return any(not row.get("anomaly") for rows in (meta.get("train") or {}).values() for row in rows)
    except (AttributeError, TypeError):
        return True


def run_suite(model: DHRCLIP, data_root: str | os.PathLike, settings: EvalConfig, names: list[str] | None = None,
              reindex: bool = False) -> dict:
    """Test ``model`` on each dataset in ``names`` (default: all known) found under ``data_root``.

    ``settings`` gives the test settings (batch size, grid, k_shot, ...); its
    ``save_path`` is the suite's folder, and each dataset gets ``save_path/<name>``
    and its own data path. Returns what suite.json holds.
    """
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise UserError(f"data root not found: {data_root}", field="data_path")
    unknown = sorted(set(names or ()) - set(DATASETS))
    if unknown:
        raise UserError(f"unknown datasets {unknown}; known: {', '.join(DATASETS)}", field="datasets")
    chosen = [DATASETS[n] for n in (names or DATASETS)]
    present = [spec for spec in chosen if (data_root / spec.name).exists()]
    others = sorted(p.name for p in data_root.iterdir() if p.is_dir() and p.name not in DATASETS)
    if others:
        log.info("suite: not a known dataset name, not tested: %s", ", ".join(others))
    log.info("suite: %d of %d datasets present under %s (%s)", len(present), len(chosen), data_root,
             ", ".join(spec.name for spec in present) or "none")
    rows: dict[str, dict] = {}
    folders: dict[Path, str] = {}  # the real folders tested, by dataset: two names for one folder are refused
    for spec in chosen:
        folder = data_root / spec.name
        row: dict = {"title": spec.title, "domain": spec.domain}
        rows[spec.name] = row
        if spec not in present:
            row["status"] = "absent"
            continue
        began = time.perf_counter()
        log.info("suite: dataset %d of %d, %s", present.index(spec) + 1, len(present), spec.name)
        try:
            if not folder.is_dir():
                raise UserError(f"{folder} is not a folder")
            same = folders.setdefault(folder.resolve(), spec.name)
            if same != spec.name:
                raise UserError(f"{folder} is the folder of {same} too; point {spec.name} at its own folder (for a "
                                f"bundle such as TestDataset/, the sub-folder of {spec.title})")
            row["index"], meta = prepare(spec, folder, reindex)
            notes = _check_origin(spec, folder, meta)
            if settings.k_shot and not _has_train_images(meta):
                row.update(status="not applicable", reason=f"k_shot {settings.k_shot}: {spec.title} has no normal "
                                                            f"training images to draw from")
                log.info("%s: %s", spec.name, row["reason"])
                continue
            config = replace(settings, data_path=folder, save_path=settings.save_path / spec.name, dataset=spec.name,
                             classes=None)
            results = evaluate(model, config)
        except UserError as exc:  # one dataset's problem does not cost the others' results
            log.error("%s: %s", spec.name, exc)
            row.update(status="failed", error=str(exc))
            continue
        row.update(status="tested", metrics={c: results["mean"][c] for c in COLUMNS}, notes=notes + results["notes"],
                   images=results["timing"]["images"], seconds=round(time.perf_counter() - began, 1),
                   results=str(config.save_path / "results.json"))
    checkpoint = str(model.checkpoint) if model.checkpoint else None
    report = {
        "header": protocol_header(model, settings, checkpoint),
        "checkpoint": checkpoint,
        "data_root": str(data_root),
        "test_config": settings.to_dict(),
        "datasets": rows,
        "means": {domain: block_mean(rows, domain) for domain in DOMAINS},
        "absent": [name for name, row in rows.items() if row["status"] == "absent"],
        "failed": {name: row["error"] for name, row in rows.items() if row["status"] == "failed"},
        "not_applicable": {name: row["reason"] for name, row in rows.items() if row["status"] == "not applicable"},
    }
    if world().is_main:
        table = format_suite(report)
        print(table)
        settings.save_path.mkdir(parents=True, exist_ok=True)
        (settings.save_path / "suite.md").write_text(table + "\n")
        save_json(settings.save_path / "suite.json", report)
        log.info("suite table in %s", settings.save_path / "suite.md")
    return report


def block_mean(rows: dict[str, dict], domain: str) -> dict[str, float | None]:
    """Each column's mean over the block's tested datasets where it is defined."""
    tested = (row["metrics"] for row in rows.values() if row["domain"] == domain and row["status"] == "tested")
    return over_defined(tested, names=COLUMNS)


def format_suite(report: dict) -> str:
    """The combined table (markdown): one block per domain with its tested datasets and their
    mean, "-" where a metric is undefined; absent and failed datasets listed below."""
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    rows = report["datasets"]
    lines = []
    for domain in DOMAINS:
        tested = [(name, row) for name, row in rows.items() if row["domain"] == domain and row["status"] == "tested"]
        if not tested:
            continue
        lines.append([f"**{domain}**", *[""] * len(COLUMNS)])
        lines += [[name, *(cell(row["metrics"][c]) for c in COLUMNS)] for name, row in tested]
        lines.append([f"mean ({domain})", *(cell(report["means"][domain][c]) for c in COLUMNS)])
    text = tabulate(lines, headers=HEADERS, tablefmt="pipe") if lines else "no dataset was tested"
    text = f"{report['header']}\n\n{text}"
    notes = [f"- {name}: {note}" for name, row in rows.items() for note in row.get("notes", [])]
    if notes:
        text += "\n\nNotes:\n" + "\n".join(notes)
    if report["failed"]:
        text += "\n\nFailed:\n" + "\n".join(f"- {name}: {error}" for name, error in report["failed"].items())
    if report["not_applicable"]:
        text += "\n\nNot applicable:\n" + "\n".join(f"- {name}: {why}"
                                                     for name, why in report["not_applicable"].items())
    if report["absent"]:
        text += "\n\nAbsent: " + ", ".join(report["absent"])
    return text
