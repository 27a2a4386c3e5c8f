"""An exported file's metadata: written once and read back by one reader that refuses every damaged
property with one UserError naming the file and the property."""
import json
from pathlib import Path

import pytest

from dhrclip.config import ModelConfig
from dhrclip.deploy.metadata import OnnxMetadata, read_metadata
from dhrclip.detector.results import Thresholds
from dhrclip.detector.signature import Signature
from dhrclip.errors import UserError

PATH = Path("model.onnx")
META = OnnxMetadata("0.2.0", Signature(ModelConfig(pretrained="none"), {"mode": "fixed"}, "/c/epoch_3.pth",
                                       "size:1:sha256:ab", "digest"), 448, "fp32", Thresholds(0.4, 1.1), ["g.png"],
                    patch=16, width=768)


def test_properties_read_back_equal():
    assert read_metadata(META.to_properties(), PATH) == META


@pytest.mark.parametrize("key,value,words", [
    ("config", "not json", '"config" is not valid JSON'),
    ("config", "[]", '"config" must be a mapping'),
    ("config", json.dumps({"version": 1, "target_image_size": 200000}), '"config.target_image_size"'),
    ("thresholds", "not json", '"thresholds" is not valid JSON'),
    ("thresholds", json.dumps({"image_threshold": "high"}), '"thresholds" holds image_threshold must be'),
    ("thresholds", json.dumps({"image_threshold": True}), '"thresholds" holds image_threshold must be'),
    ("thresholds", json.dumps([0.4]), '"thresholds" must be null or a record'),
    ("canvas", "big", '"canvas" must be a whole number of pixels'),
    ("canvas", "0", '"canvas" must be a whole number of pixels'),
    ("canvas", "-5", '"canvas" must be a whole number of pixels'),
    ("canvas", "99999", '"canvas" must be a whole number of pixels'),
    ("patch", "16.5", '"patch" must be a whole number from 1 to 4096'),
    ("width", "wide", '"width" must be a whole number from 1 to 4096'),
    ("width", "0", '"width" must be a whole number from 1 to 4096'),
    ("width", "²", '"width" must be a whole number from 1 to 4096'),  # a digit to str.isdigit, not to int()
    ("canvas", "٤٤٨", '"canvas" must be a whole number of pixels'),
    ("reference", json.dumps({"images": ["g.png"]}), '"reference" must be null or a record with a digest'),
    ("reference", "not json", '"reference" is not valid JSON'),
    ("grid", json.dumps("fixed"), '"grid" must be a record'),
    ("precision", "int4", '"precision" must be one of fp32, fp16'),
])
def test_damaged_metadata_is_one_user_error_naming_the_property(key, value, words):
    properties = {**META.to_properties(), f"dhrclip.{key}": value}
    with pytest.raises(UserError) as info:
        read_metadata(properties, PATH)
    assert str(PATH) in str(info.value) and words in str(info.value), str(info.value)
    assert info.value.field == "onnx"


def test_a_file_of_an_older_release_without_patch_and_width_reads():
    properties = {k: v for k, v in META.to_properties().items() if k not in ("dhrclip.patch", "dhrclip.width")}
    found = read_metadata(properties, PATH)
    assert (found.patch, found.width) == (None, None) and found.signature == META.signature


def test_a_file_without_the_projects_metadata():
    with pytest.raises(UserError, match="was not written by export.py"):
        read_metadata({"producer": "other"}, PATH)
