"""Thresholds from known-good images (predict.py ``calibrate_on``, the page's reference).

Each threshold is the ``quantile`` (default 1.0, the maximum) of the good images' image scores
and of their maps' per-image maxima, so with the default no known-good image is flagged; with
many calibration images a quantile such as 0.99 tolerates a few outliers among them. When the
good images are also the detector's few-shot bank, each is scored against the bank without its
own tokens (leave-one-out); otherwise the thresholds would sit at the zero distance of images
scored against themselves. Under torchrun each process scores a share of the images.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..config import RunOptions
from ..data.images import collect_images
from ..detector.results import Detector, Thresholds
from ..detector.thresholds import threshold_record
from ..errors import UserError
from .distributed import gather_all, world

log = logging.getLogger(__name__)

FEW_CALIBRATION_IMAGES = 10


def calibrate(model: Detector, spec: str, run: RunOptions, quantile: float = 1.0, skip_errors: bool = True,
              exclude: Path | None = None) -> dict:
    """A threshold.json's contents: thresholds from the good images of ``spec`` (a file, folder or
    glob; nothing inside ``exclude``), with what they hold for and how they were found."""
    files, _ = collect_images(spec, exclude, "calibrate_on")
    mine = world().shard(len(files), run.batch_size)
    bank = model.reference_sources
    if bank and not model.can_leave_out and set(bank) & {str(f.resolve()) for f in files}:
        raise UserError(f"calibrate_on {spec} shares images with the reference bank inside the exported file, "
                        f"which cannot leave an image out; calibrate on other good images, or with the PyTorch "
                        f"model and reference", field="calibrate_on")
    own = None
    if model.can_leave_out:  # leave-one-out: a reference image is scored without its own tokens
        index = {name: k for k, name in enumerate(bank)}
        own = [index.get(str(f.resolve()), -1) for f in files[mine.start:mine.stop]]
        if any(k >= 0 for k in own) and len(bank) < 2:
            raise UserError("calibrating on the reference image itself needs at least 2 reference images "
                            "(each is scored against the others)", field="calibrate_on")
    scores, maxima = [], []
    for i, result in model.iter_predictions(files[mine.start:mine.stop], run, skip_errors, own, "calibrating",
                                            progress=world().is_main):
        if isinstance(result, str):
            log.warning("calibration skips %s: %s", files[mine.start + i], result)
            continue
        scores.append(result.score)
        maxima.append(result.map_max)
    shares = gather_all((scores, maxima))
    scores, maxima = [v for s, _ in shares for v in s], [v for _, m in shares for v in m]
    if not scores:
        raise UserError(f"calibrate_on {spec}: none of its images could be read", field="calibrate_on")
    if len(scores) < FEW_CALIBRATION_IMAGES:
        log.warning("thresholds calibrated on only %d good image(s) are uncertain; %d or more are advised",
                    len(scores), FEW_CALIBRATION_IMAGES)
    thresholds = Thresholds(float(np.quantile(scores, quantile)), float(np.quantile(maxima, quantile)))
    return threshold_record(
        model.signature(run), thresholds,
        rule=f"quantile {quantile} of the known-good images' image scores and per-image map maxima",
        calibration_images=len(scores), calibrate_on=str(spec),
        good_score_range=[float(min(scores)), float(max(scores))],
        leave_one_out=own is not None and any(k >= 0 for k in own))
