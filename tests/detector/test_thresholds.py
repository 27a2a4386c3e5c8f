"""threshold.json: written with the signature it holds for, read back by one reader that refuses every
damaged field with one UserError naming the file and the field, and checked against a run."""
import json

import numpy as np
import pytest
from conftest import settings, train_small
from PIL import Image

from dhrclip import DHRCLIP, PredictConfig, predict
from dhrclip.config import ModelConfig
from dhrclip.data.synthetic import synthetic_image
from dhrclip.detector.results import Thresholds
from dhrclip.detector.signature import Signature
from dhrclip.detector.thresholds import read_threshold_file, threshold_record
from dhrclip.errors import UserError

CONFIG = ModelConfig(pretrained="none")
SIGNATURE = Signature(CONFIG, {"mode": "auto", "max_tiles": 9}, "ckpt.pth", "size:1:sha256:ab", None)


def written(tmp_path, data, raw=None):
    path = tmp_path / "threshold.json"
    path.write_text(raw if raw is not None else json.dumps(data))
    return path


def test_a_record_reads_back_and_holds_for_its_signature(tmp_path):
    record = threshold_record(SIGNATURE, Thresholds(0.4, 1.2), rule="by hand")
    saved = read_threshold_file(written(tmp_path, record))
    assert saved.thresholds == Thresholds(0.4, 1.2) and saved.record["rule"] == "by hand"
    saved.check(SIGNATURE)
    with pytest.raises(UserError, match="calibrated with grid auto \\(max_tiles 9\\), and this run uses grid fixed"):
        saved.check(Signature(CONFIG, {"mode": "fixed"}, "ckpt.pth", "size:1:sha256:ab"))
    with pytest.raises(UserError, match="this run uses sigma=2.0, but .* was calibrated with 8.0") as info:
        saved.check(Signature(ModelConfig(pretrained="none", sigma=2.0), SIGNATURE.grid, "ckpt.pth",
                              "size:1:sha256:ab"))
    assert info.value.field == "sigma"
    with pytest.raises(UserError, match="calibrated for the checkpoint ckpt.pth, not other.pth"):
        saved.check(Signature(CONFIG, SIGNATURE.grid, "other.pth", "size:2:sha256:cd"))
    with pytest.raises(UserError, match="calibrated without a reference, and this run uses another bank"):
        saved.check(Signature(CONFIG, SIGNATURE.grid, "ckpt.pth", "size:1:sha256:ab", "digest"))
    with_bank = read_threshold_file(written(tmp_path, threshold_record(
        Signature(CONFIG, SIGNATURE.grid, "ckpt.pth", "size:1:sha256:ab", "digest"), Thresholds(0.4, None))))
    with pytest.raises(UserError, match="calibrated with a reference bank, and this run uses none"):
        with_bank.check(SIGNATURE)


def test_the_auto_grid_ignores_the_fixed_canvas_and_the_fixed_grid_its_max_tiles(tmp_path):
    record = threshold_record(SIGNATURE, Thresholds(0.4, None))
    other_canvas = ModelConfig(pretrained="none", target_image_size=672, tiles_per_side=3)
    read_threshold_file(written(tmp_path, record)).check(
        Signature(other_canvas, SIGNATURE.grid, "ckpt.pth", "size:1:sha256:ab"))
    fixed = {**record, "grid": {"mode": "fixed", "max_tiles": 4}}  # as earlier releases wrote it
    read_threshold_file(written(tmp_path, fixed)).check(
        Signature(CONFIG, {"mode": "fixed"}, "ckpt.pth", "size:1:sha256:ab"))


RECORD = threshold_record(SIGNATURE, Thresholds(0.4, 1.2))


@pytest.mark.parametrize("data,raw,part", [
    (None, "{not json", "not valid JSON"),
    (None, '{"image_threshold": NaN}', "not valid JSON"),
    (None, '{"image_threshold": 1e400}', '"image_threshold" must be a finite number'),
    (None, '{"image_threshold": 1' + "0" * 400 + "}", '"image_threshold" must be a finite number'),
    (None, "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ({"image_threshold": True}, None, '"image_threshold" must be a finite number'),
    ({"image_threshold": "high"}, None, '"image_threshold" must be a finite number'),
    ({"image_threshold": 0.4, "pixel_threshold": [1]}, None, '"pixel_threshold" must be a finite number'),
    ({"pixel_threshold": 0.4}, None, "it has no image_threshold"),
    ([0.4], None, "is not a threshold.json"),
    ({**RECORD, "grid": "fixed"}, None, '"grid" must be a record'),
    ({**RECORD, "grid": {"mode": "auto", "max_tiles": "many"}}, None, '"grid.max_tiles" must be a whole number'),
    ({**RECORD, "config": "x"}, None, '"config" must be a mapping'),
    ({**RECORD, "config": {**RECORD["config"], "image_size": "abc"}}, None, '"config.image_size"'),
    ({**RECORD, "config": {**RECORD["config"], "features_list": "24"}}, None, '"config.features_list"'),
    ({**RECORD, "checkpoint_fingerprint": 5}, None, '"checkpoint_fingerprint" must be a text'),
    ({**RECORD, "reference": ["x"]}, None, '"reference" must be a text'),
])
def test_damaged_threshold_files_are_one_user_error_naming_the_field(tmp_path, data, raw, part):
    path = written(tmp_path, data, raw)
    with pytest.raises(UserError) as info:
        read_threshold_file(path)
    assert str(path) in str(info.value) and part in str(info.value), str(info.value)
    assert info.value.field == "threshold_file"


def test_a_file_of_an_earlier_release_without_settings_is_checked_for_grid_and_bank_only(tmp_path, caplog):
    saved = read_threshold_file(written(tmp_path, {"image_threshold": 0.5, "pixel_threshold": None}))
    saved.check(Signature(CONFIG, {"mode": "fixed"}))
    assert "records no settings" in caplog.text
    with pytest.raises(UserError, match="grid fixed"):
        saved.check(Signature(CONFIG, {"mode": "auto", "max_tiles": 9}))


def test_threshold_file_is_refused_for_other_settings_or_checkpoints(tmp_path, checkpoint, clip_file, source_data):
    rng = np.random.default_rng(2)
    (tmp_path / "good").mkdir()
    for i in range(3):
        Image.fromarray(synthetic_image("grain", 40, 40, rng)).save(tmp_path / "good" / f"{i}.png")
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    common = dict(input=str(tmp_path / "good"), batch_size=4, num_workers=0)
    predict(model, settings(PredictConfig, **common, save_path=tmp_path / "cal", calibrate_on=str(tmp_path / "good")))
    threshold = tmp_path / "cal" / "threshold.json"
    assert json.loads(threshold.read_text())["config"]["sigma"] == 8
    predict(model, settings(PredictConfig, **common, save_path=tmp_path / "same", threshold_file=threshold))
    smoother = DHRCLIP.from_checkpoint(checkpoint, device="cpu", sigma=0)
    with pytest.raises(UserError, match="this run uses sigma=0, but .* was calibrated with 8.0") as error:
        predict(smoother, settings(PredictConfig, **common, save_path=tmp_path / "x", threshold_file=threshold))
    assert error.value.field == "sigma"
    train_small(source_data, tmp_path / "other", clip_file, epochs=2)
    other = DHRCLIP.from_checkpoint(tmp_path / "other", device="cpu")
    with pytest.raises(UserError, match="calibrated for the checkpoint"):
        predict(other, settings(PredictConfig, **common, save_path=tmp_path / "y", threshold_file=threshold))
