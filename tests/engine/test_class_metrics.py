"""Per-class metrics streamed over batches and processes."""
import json

import pytest
from conftest import SMALL, reference_checkpoint

from dhrclip import cli


def test_streamed_class_metrics_do_not_depend_on_batch_boundaries(tmp_path, clip_file, target_data):
    reference_checkpoint(tmp_path / "p.pth")
    results = []
    for batch in ("3", "5", "16"):  # boundaries inside classes, straddling them, one batch for all
        argv = ["--data_path", str(target_data), "--save_path", str(tmp_path / batch), "--checkpoint_path",
                str(tmp_path / "p.pth"), "--pretrained", str(clip_file), *SMALL, "--batch_size", batch]
        cli.test_main(argv)
        results.append(json.loads((tmp_path / batch / "results.json").read_text())["classes"])
    for other in results[1:]:
        for cls, metrics in results[0].items():
            assert other[cls] == pytest.approx(metrics, abs=1e-6), cls


def test_memory_follows_the_classes_in_flight_not_the_number_of_classes(tmp_path, checkpoint, target_data,
                                                                         monkeypatch):
    """A class's 1.5 MB of histograms exists from its first image to its last: with one image per
    class, at most a batch's classes hold a state at once, however many classes the index has."""
    import gc
    import json
    import weakref

    from dhrclip import DHRCLIP, EvalConfig, evaluate
    from dhrclip.config import RunOptions
    from dhrclip.engine import class_metrics
    from dhrclip.metrics import PixelAccumulator

    meta = json.loads((target_data / "meta.json").read_text())
    items = [dict(item, img_path=str(target_data / item["img_path"]),
                  mask_path=str(target_data / item["mask_path"]) if item["mask_path"] else "")
             for rows in meta["test"].values() for item in rows]
    (tmp_path / "data").mkdir()
    classes = {f"class{k:03d}": [dict(items[k % len(items)], cls_name=f"class{k:03d}")] for k in range(24)}
    (tmp_path / "data" / "meta.json").write_text(json.dumps({"train": {}, "test": classes}))
    alive: list = []
    most = [0]

    class Counted(PixelAccumulator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            alive.append(weakref.ref(self))
            gc.collect()
            most[0] = max(most[0], sum(ref() is not None for ref in alive))

    monkeypatch.setattr(class_metrics, "PixelAccumulator", Counted)
    results = evaluate(DHRCLIP.from_checkpoint(checkpoint, device="cpu"),
                       EvalConfig(data_path=tmp_path / "data", save_path=tmp_path / "out",
                                  run=RunOptions(batch_size=4, num_workers=0)))
    assert len(results["classes"]) == 24 and len(alive) == 24  # one state per class, over the run
    assert most[0] <= 4 + 1  # a batch's classes, and the one being made
