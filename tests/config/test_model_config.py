"""Model settings: how settings given for a run merge into what a checkpoint recorded."""
import logging

import pytest

from dhrclip import DHRCLIP
from dhrclip.errors import UserError


def test_test_time_geometry_may_differ_and_is_logged(caplog, odd_checkpoint):
    with caplog.at_level(logging.INFO):
        model = DHRCLIP.from_checkpoint(odd_checkpoint, device="cpu", target_image_size=112, patch_image_size=70,
                                        sigma=0)
    assert model.config.target_image_size == 112 and model.config.sigma == 0
    assert model.resolved.sources["target_image_size"] == "argument"
    assert model.resolved.sources["image_size"] == "checkpoint"
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("target_image_size=112 at test time (trained with 98)" in m for m in info)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_taps_may_differ_with_a_warning_naming_both_values(caplog, odd_checkpoint):
    with caplog.at_level(logging.WARNING):
        model = DHRCLIP.from_checkpoint(odd_checkpoint, device="cpu", features_list=[2, 3], dpam=3)
    assert model.config.features_list == (2, 3) and model.config.dpam == 3
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "features_list=[2, 3] differs from training (features_list=[1, 3])" in warnings
    assert "dpam=3 differs from training (dpam=2)" in warnings


@pytest.mark.parametrize("field,value", [("n_ctx", 6), ("depth", 3), ("t_n_ctx", 2)])
def test_prompt_shapes_may_not_differ(odd_checkpoint, field, value):
    with pytest.raises(UserError, match=f"{field}={value} does not fit the checkpoint") as error:
        DHRCLIP.from_checkpoint(odd_checkpoint, device="cpu", **{field: value})
    assert error.value.field == field
