"""test.py's work: testing a checkpoint end to end, few-shot draws, protocol refusals."""
from __future__ import annotations

import pytest
from conftest import SMALL, settings, train_small

from dhrclip import DHRCLIP, EvalConfig, cli, evaluate
from dhrclip.detector.checkpoint import read_checkpoint


def test_trained_checkpoint_is_tested_end_to_end(tmp_path, clip_file, source_data, target_data):
    train_small(source_data, tmp_path / "ckpt", clip_file, epochs=2)
    ckpt = read_checkpoint(tmp_path / "ckpt")
    assert ckpt.state["epoch"] == 2 and ckpt.config.depth == 3
    model = DHRCLIP.from_checkpoint(tmp_path / "ckpt", device="cpu")
    config = dict(data_path=target_data, save_path=tmp_path / "res", batch_size=4, num_workers=0)
    results = evaluate(model, settings(EvalConfig, **config, vis=True))
    assert all(0.0 <= v <= 1.0 for v in results["mean"].values())
    assert "mean" in (tmp_path / "res" / "log.txt").read_text()
    figures = sorted((tmp_path / "res" / "vis" / "ring").glob("*.png"))
    assert len(figures) == 7 and any(f.name.startswith("good_") for f in figures)

    legacy = evaluate(model, settings(EvalConfig, **config, aupro="legacy", metrics="pixel-level", classes=["ring"]))
    assert list(legacy["classes"]) == ["ring"]
    ring, exact_ring = legacy["classes"]["ring"], results["classes"]["ring"]
    assert ring["image_auroc"] is None and ring["pixel_auroc"] == pytest.approx(exact_ring["pixel_auroc"])
    assert ring["pixel_aupro"] is not None and ring["pixel_aupro"] != exact_ring["pixel_aupro"]


def test_auto_refuses_legacy_aupro(painted, tmp_path):
    from dhrclip.errors import UserError

    checkpoint, data = painted
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    with pytest.raises(UserError, match="legacy") as info:
        evaluate(model, settings(EvalConfig, data_path=data, save_path=tmp_path, grid="auto", aupro="legacy"))
    assert info.value.field == "aupro"


def test_k_shot_beyond_the_train_split_is_a_clear_error(with_train_split, checkpoint, tmp_path, capsys):
    _, test_root = with_train_split
    with pytest.raises(SystemExit) as done:
        cli.test_main(["--data_path", str(test_root), "--checkpoint_path", str(checkpoint), "--save_path",
                       str(tmp_path), "--k_shot", "5", *SMALL])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "--k_shot 5" in err and "only 4 good train image(s)" in err and "checker" in err


def test_a_class_draws_the_same_references_whichever_classes_are_tested(with_train_split):
    from dhrclip.engine.evaluation import draw_references

    _, test_root = with_train_split
    config = settings(EvalConfig, data_path=test_root, k_shot=2)
    alone = draw_references(config, ["ring"], 5)["ring"]
    assert draw_references(config, ["checker", "ring"], 5)["ring"] == alone
    assert draw_references(config, ["ring", "checker"], 5)["ring"] == alone


def test_an_unreadable_test_image_is_left_out_named_and_ends_with_status_3(tmp_path, checkpoint, target_data):
    """Metrics on the rest equal those of the same dataset without the broken images, whose paths
    are in results.json; with on_error stop the run ends at the first one (status 2)."""
    import json
    import shutil

    data, without = tmp_path / "data", tmp_path / "without"
    shutil.copytree(target_data, data)
    meta = json.loads((data / "meta.json").read_text())
    broken = [meta["test"]["ring"][0], meta["test"]["checker"][-1]]  # an anomalous image with a mask, and another
    for row in broken:
        path = data / row["img_path"]
        path.write_bytes(path.read_bytes()[:60])  # a truncated PNG
    shutil.copytree(data, without)
    meta["test"] = {c: [r for r in rows if r not in broken] for c, rows in meta["test"].items()}
    (without / "meta.json").write_text(json.dumps(meta))

    common = ["--checkpoint_path", str(checkpoint), "--aupro", "legacy", "--num_workers", "0", "--batch_size", "3",
              "--device", "cpu"]
    with pytest.raises(SystemExit) as info:
        cli.test_main(["--data_path", str(data), "--save_path", str(tmp_path / "res"), *common])
    assert info.value.code == 3
    results = json.loads((tmp_path / "res" / "results.json").read_text())
    assert sorted(results["skipped"]) == sorted(str(data / row["img_path"]) for row in broken)
    cli.test_main(["--data_path", str(without), "--save_path", str(tmp_path / "clean"), *common])
    clean = json.loads((tmp_path / "clean" / "results.json").read_text())
    assert clean["skipped"] == {} and results["classes"].keys() == clean["classes"].keys()
    for cls, found in results["classes"].items():  # equal up to batch composition's float rounding
        assert found == pytest.approx(clean["classes"][cls], abs=1e-6)
    with pytest.raises(SystemExit) as info:
        cli.test_main(["--data_path", str(data), "--save_path", str(tmp_path / "stop"), "--on_error", "stop",
                       *common])
    assert info.value.code == 2 and not (tmp_path / "stop" / "results.json").exists()


def test_metrics_per_defect_type_equal_a_test_of_that_type_alone_and_tables_say_what_they_are(
        tmp_path, checkpoint, target_data, capsys):
    """results.json's defect_types: each type's metrics are those of a dataset holding only the
    class's normal images and that type's anomalous ones; the table's first line names the
    checkpoint, protocol, grid and geometry, and --defect_types prints the per-type table."""
    import json
    import shutil

    common = ["--checkpoint_path", str(checkpoint), "--num_workers", "0", "--batch_size", "4", "--device", "cpu"]
    cli.test_main(["--data_path", str(target_data), "--save_path", str(tmp_path / "all"), "--defect_types", *common])
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "all" / "results.json").read_text())
    assert printed.startswith(f"checkpoint {checkpoint}") and "zero-shot | grid fixed | S=56 P=70 T=112" in printed
    assert "per defect type:" in printed and results["header"] in (tmp_path / "all" / "log.txt").read_text()
    meta = json.loads((target_data / "meta.json").read_text())
    ring = meta["test"]["ring"]
    kinds = sorted({row["specie_name"] for row in ring if row["anomaly"]})
    assert sorted(results["defect_types"]["ring"]) == kinds and len(kinds) > 1
    for kind in kinds:
        alone = tmp_path / f"only_{kind}"
        shutil.copytree(target_data, alone)
        rows = [row for row in ring if not row["anomaly"] or row["specie_name"] == kind]
        (alone / "meta.json").write_text(json.dumps({"train": {}, "test": {"ring": rows}}))
        cli.test_main(["--data_path", str(alone), "--save_path", str(tmp_path / f"res_{kind}"), *common])
        want = json.loads((tmp_path / f"res_{kind}" / "results.json").read_text())["classes"]["ring"]
        assert results["defect_types"]["ring"][kind] == pytest.approx(want, abs=1e-6), kind
