"""Calibration on known-good images, leave-one-out against a bank."""
from __future__ import annotations

import pytest

from dhrclip import DHRCLIP


def test_leave_one_out_calibration_never_uses_an_images_own_tokens(checkpoint, goods):
    from dhrclip.config import RunOptions
    from dhrclip.detector.inference import iter_predictions
    from dhrclip.engine.calibration import calibrate

    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    few = model.with_reference(goods, grid="fixed")
    found = calibrate(few, str(goods[0].parent), RunOptions(batch_size=2))
    assert found["leave_one_out"] and found["calibration_images"] == 4
    # each image's calibration score is its score against a bank of the other three, distances
    # counted in the whole bank's units (a unit belongs to a bank, not to its subsets)
    scores = []
    for k, image in enumerate(goods):
        others = model.with_reference([g for g in goods if g != image], grid="fixed")
        others.reference.__dict__["units"] = few.reference.units
        scores.append(others.predict(image, grid="fixed").score)
    assert found["image_threshold"] == pytest.approx(max(scores), abs=1e-6)
    assert found["good_score_range"][0] == pytest.approx(min(scores), abs=1e-6)
    # and with its own tokens in the bank an image scores lower, so none is flagged at quantile 1.0
    run = RunOptions(batch_size=2, num_workers=0)
    for _, result in iter_predictions(few.model, goods, few.grid_for(run), run):
        assert result.score <= found["image_threshold"] and result.map_max <= found["pixel_threshold"]
