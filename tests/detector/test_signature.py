"""One signature check serves every artifact: each scope counts only the parts that change its results."""
import pytest

from dhrclip.config import ModelConfig
from dhrclip.detector.signature import BANK, RESUME, THRESHOLDS, Signature
from dhrclip.errors import UserError

FIXED, AUTO = {"mode": "fixed"}, {"mode": "auto", "max_tiles": 9}
BASE = ModelConfig(pretrained="a.pt", weights_fingerprint="size:1:sha256:aa")


def signature(grid=FIXED, checkpoint="c.pth", fingerprint="size:2:sha256:cc", reference=None, **settings):
    return Signature(ModelConfig(**{**vars(BASE), **settings}), grid, checkpoint, fingerprint, reference)


def test_thresholds_hold_for_everything_that_changes_a_map_or_a_score():
    saved = signature()
    saved.check(signature(), THRESHOLDS, "t.json")
    for changed, field in ((signature(sigma=4.0), "sigma"), (signature(n_ctx=6), "n_ctx"),
                           (signature(weights_fingerprint="size:9:sha256:ff"), "pretrained"),
                           (signature(fingerprint="size:3:sha256:dd"), "threshold_file"),
                           (signature(grid=AUTO), "grid"), (signature(reference="digest"), "reference")):
        with pytest.raises(UserError) as info:
            saved.check(changed, THRESHOLDS, "t.json")
        assert info.value.field == field and "t.json" in str(info.value)


def test_the_auto_grid_does_not_care_for_the_fixed_canvas():
    signature(grid=AUTO).check(signature(grid=AUTO, target_image_size=672, tiles_per_side=3), THRESHOLDS, "t")
    with pytest.raises(UserError, match="target_image_size"):
        signature().check(signature(target_image_size=672), THRESHOLDS, "t")


def test_a_bank_cares_for_the_vision_settings_alone():
    bank = signature(checkpoint=None, fingerprint=None)
    bank.check(signature(sigma=2.0, depth=3, n_ctx=4, t_n_ctx=1, alpha=0.5), BANK, "bank")
    with pytest.raises(UserError, match="reference bank was built with features_list=\\[6, 12, 18, 24\\], and this "
                                        "model uses \\[24\\]"):
        bank.check(signature(features_list=(24,)), BANK, "bank")


def test_resuming_may_move_the_weights_file_but_changes_nothing_else():
    saved = signature()
    saved.check(signature(pretrained="moved/a.pt"), RESUME, "epoch_2.pth")
    with pytest.raises(UserError, match="dpam=4 differs from the checkpoint being resumed \\(trained with 20\\)"):
        saved.check(signature(dpam=4), RESUME, "epoch_2.pth")


def test_records_round_trip():
    saved = signature(grid=AUTO, reference="digest")
    assert Signature.from_dict(saved.to_dict(), "t.json") == saved
