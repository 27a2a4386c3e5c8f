"""Files: atomic writes leave the previous file when interrupted."""
import json

import pytest


def test_interrupted_results_write_leaves_the_previous_file(monkeypatch, tmp_path):
    from dhrclip import files
    target = tmp_path / "results.json"
    files.save_json(target, {"run": 1})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(files.json, "dumps", crash)
    with pytest.raises(KeyboardInterrupt):
        files.save_json(target, {"run": 2})
    assert json.loads(target.read_text()) == {"run": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
