"""Few-shot reference banks: nearest neighbours against a loop, leave-one-out calibration, saved banks,
test.py --k_shot and predict.py --reference."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SMALL, train_small
from dhrclip import DHRCLIP, EvalConfig, evaluate
from dhrclip import cli
from dhrclip.core import fewshot
from dhrclip.errors import UserError
from dhrclip.data.indexing import mvtec_layout_index, write_meta
from dhrclip.data.synthetic import synthetic_image, write_mvtec_dataset


@pytest.fixture(scope="module")
def goods(tmp_path_factory):
    """Four good images of one part, as files."""
    folder = tmp_path_factory.mktemp("good")
    rng = np.random.default_rng(7)
    for k in range(4):
        Image.fromarray(synthetic_image("disk", 80, 100, rng)).save(folder / f"good_{k}.png")
    return sorted(folder.glob("*.png"))


def brute_nearest(queries, bank, owner, exclude):
    """For each query row, the largest cosine similarity to a bank row of another owner, by a loop."""
    out = []
    for i, q in enumerate(queries):
        best = -np.inf
        for j, b in enumerate(bank):
            if exclude is not None and owner[j] == exclude[i]:
                continue
            best = max(best, float(q @ b / (np.linalg.norm(q) * np.linalg.norm(b))))
        out.append(best)
    return np.array(out)


@pytest.mark.parametrize("chunk", [3, 4096])
def test_nearest_similarity_equals_a_loop_in_any_chunking(monkeypatch, chunk):
    monkeypatch.setattr(fewshot, "CHUNK", chunk)
    g = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(11, 5, generator=g), torch.randn(9, 5, generator=g)
    owner = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2])
    exclude = torch.tensor([0, 1, 2, -1, 0, 1, 2, -1, 0, 1, 2])
    normalised = torch.nn.functional.normalize(bank, dim=-1)
    for skip in (None, exclude):
        got = fewshot.nearest_similarity(queries, normalised, owner, skip).numpy()
        want = brute_nearest(queries.numpy(), bank.numpy(), owner.numpy(), None if skip is None else skip.numpy())
        assert np.allclose(got, want, atol=1e-6)


def test_bank_tokens_and_few_shot_map_by_hand(checkpoint, goods):
    """The bank holds every patch token of every reference view; the few-shot map of an image is
    1 − its tokens' nearest similarity, which is 0 for an image in the bank and positive otherwise."""
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    few = model.with_reference(goods[:2], grid="fixed")
    bank = few.reference
    layers = len(model.config.features_list)
    feats = model.model.encode_views(torch.stack([_canvas(p, model) for p in goods[:2]]))
    for layer in range(layers):
        want = torch.nn.functional.normalize(feats.global_tokens[layer][:, 1:].flatten(0, 1).float(), dim=-1)
        assert torch.allclose(bank.global_tokens[layer], want, atol=1e-6)
        assert len(bank.tile_tokens[layer]) == 2 * model.model.tiles.count * (feats.tile_tokens[layer].shape[1] - 1)
    assert bank.global_owner.tolist() == [0] * (len(bank.global_owner) // 2) + [1] * (len(bank.global_owner) // 2)
    inside = few.model.few_shot_maps(model.model.encode_views(_canvas(goods[0], model)[None]))
    outside = few.model.few_shot_maps(model.model.encode_views(_canvas(goods[3], model)[None]))
    assert float(inside.abs().max()) < 1e-5 and float(outside.min()) > 0


def _canvas(path, model):
    from dhrclip.data.canvases import to_canvas
    from dhrclip.data.images import load_rgb

    return to_canvas(load_rgb(path), model.config.target_image_size)


def test_leave_one_out_calibration_never_uses_an_images_own_tokens(checkpoint, goods):
    from dhrclip.detector.inference import iter_predictions
    from dhrclip.engine.prediction import calibrate

    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    few = model.with_reference(goods, grid="fixed")
    found = calibrate(few, str(goods[0].parent), 1.0, batch_size=2, grid="fixed")
    assert found["leave_one_out"] and found["calibration_images"] == 4
    # each image's calibration score is its score against a bank of the other three
    scores = []
    for k, image in enumerate(goods):
        others = model.with_reference([g for g in goods if g != image], grid="fixed")
        scores.append(others.predict(image, grid="fixed").score)
    assert found["image_threshold"] == pytest.approx(max(scores), abs=1e-6)
    assert found["good_score_range"][0] == pytest.approx(min(scores), abs=1e-6)
    # and with its own tokens in the bank an image scores lower, so none is flagged at quantile 1.0
    for _, result in iter_predictions(few.model, goods, 2, grid="fixed"):
        assert result.score <= found["image_threshold"] and result.map_max <= found["pixel_threshold"]


def test_a_saved_bank_reloads_and_is_refused_for_other_settings(checkpoint, goods, tmp_path):
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    few = model.with_reference(goods, grid="auto")
    few.reference.save(tmp_path / "bank.safetensors")
    again = model.with_reference(tmp_path / "bank.safetensors", grid="auto")
    for a, b in zip(few.reference.tile_tokens, again.reference.tile_tokens):
        assert torch.equal(a, b)
    assert again.reference.sources == [str(p.resolve()) for p in goods]
    assert np.allclose(few.predict(goods[0]).anomaly_map, again.predict(goods[0]).anomaly_map)
    other = DHRCLIP.from_checkpoint(checkpoint, device="cpu", target_image_size=140)
    with pytest.raises(UserError, match="target_image_size") as info:
        other.with_reference(tmp_path / "bank.safetensors", grid="fixed")
    assert info.value.field == "target_image_size"
    with pytest.raises(UserError, match="grid") as info:
        model.with_reference(tmp_path / "bank.safetensors", grid="fixed")
    (tmp_path / "fake.safetensors").write_bytes(b"not a bank")
    with pytest.raises(UserError, match="not a reference bank"):
        model.with_reference(tmp_path / "fake.safetensors")


@pytest.fixture(scope="module")
def with_train_split(tmp_path_factory):
    """Test classes with 4 good train images each, and a checkpoint trained 3 epochs on other classes."""
    root = tmp_path_factory.mktemp("fewshot")
    train_root = write_mvtec_dataset(root / "train", ["stripes", "disk"], n_good=3, n_defect=6, n_train=0,
                                     size=(112, 112), seed=3, defect_color=(220, 30, 30))
    write_meta(train_root, mvtec_layout_index(train_root))
    test_root = write_mvtec_dataset(root / "test", ["checker", "ring"], n_good=3, n_defect=6, n_train=4,
                                    size=(112, 112), seed=4)
    write_meta(test_root, mvtec_layout_index(test_root))
    return train_root, test_root


def test_k_shot_4_beats_zero_shot_and_records_its_draws(with_train_split, clip_file, tmp_path):
    train_root, test_root = with_train_split
    train_small(train_root, tmp_path / "ckpt", clip_file, epochs=3)
    model = DHRCLIP.from_checkpoint(tmp_path / "ckpt" / "epoch_3.pth", device="cpu")
    common = dict(data_path=test_root, batch_size=4, num_workers=0)
    zero = evaluate(model, EvalConfig(save_path=tmp_path / "zero", **common))
    few = evaluate(model, EvalConfig(save_path=tmp_path / "few", k_shot=4, k_shot_runs=2, **common))
    assert few["mean"]["pixel_auroc"] > zero["mean"]["pixel_auroc"]  # 61.9 vs 52.5 measured
    runs = few["k_shot"]["runs"]
    assert [r["seed"] for r in runs] == [111, 112] and len(runs[0]["references"]["ring"]) == 4
    assert all("/train/good/" in path for path in runs[0]["references"]["ring"])
    assert few["k_shot"]["std"]["pixel_auroc"] is not None
    assert "±" in (tmp_path / "few" / "log.txt").read_text()


def test_k_shot_beyond_the_train_split_is_a_clear_error(with_train_split, checkpoint, tmp_path, capsys):
    _, test_root = with_train_split
    with pytest.raises(SystemExit) as done:
        cli.test_main(["--data_path", str(test_root), "--checkpoint_path", str(checkpoint), "--save_path",
                       str(tmp_path), "--k_shot", "5", *SMALL])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "--k_shot 5" in err and "only 4 good train image(s)" in err and "checker" in err


def test_predict_with_reference_and_leave_one_out_calibration_end_to_end(checkpoint, goods, tmp_path, clip_file):
    parts = tmp_path / "parts"
    parts.mkdir()
    rng = np.random.default_rng(9)
    for k in range(3):
        Image.fromarray(synthetic_image("disk", 80, 100, rng)).save(parts / f"part_{k}.png")
    common = ["--checkpoint_path", str(checkpoint), "--input", str(parts), "--calibrate_on", str(goods[0].parent),
              "--grid", "fixed", "--num_workers", "0", "--device", "cpu"]
    cli.predict_main([*common, "--save_path", str(tmp_path / "few"), "--reference", str(goods[0].parent),
                      "--save_reference", str(tmp_path / "bank.safetensors")])
    cli.predict_main([*common, "--save_path", str(tmp_path / "zero")])
    with open(tmp_path / "few" / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and all(r["decision"] in ("normal", "anomalous") for r in rows)
    few = DHRCLIP.from_checkpoint(checkpoint, device="cpu").with_reference(tmp_path / "bank.safetensors",
                                                                            grid="fixed")
    for row in rows:  # the CSV and the saved maps are the combined (zero-shot + few-shot) ones
        expected = few.predict(row["path"], grid="fixed")
        assert float(row["image_score"]) == pytest.approx(expected.score, abs=1e-5)
        saved = np.load(tmp_path / "few" / "maps" / (row["path"].rsplit("/", 1)[1].replace(".", "_") + ".npy"))
        assert np.allclose(saved, expected.anomaly_map, atol=2e-3)
    zero_rows = list(csv.DictReader(open(tmp_path / "zero" / "predictions.csv")))
    assert [r["map_max"] for r in rows] != [r["map_max"] for r in zero_rows]
    threshold = json.loads((tmp_path / "few" / "threshold.json").read_text())
    assert threshold["leave_one_out"] and threshold["reference"] == few.reference.digest()
    assert len(list((tmp_path / "few" / "figures").glob("*.png"))) == 3
    # thresholds made with the bank are refused without it
    with pytest.raises(SystemExit):
        cli.predict_main(["--checkpoint_path", str(checkpoint), "--input", str(parts), "--grid", "fixed",
                          "--threshold_file", str(tmp_path / "few" / "threshold.json"), "--save_path",
                          str(tmp_path / "again"), "--device", "cpu"])


def test_auto_banks_leave_padding_out_and_an_image_matches_itself_everywhere(checkpoint, goods):
    model = DHRCLIP.from_checkpoint(checkpoint, device="cpu")
    few = model.with_reference(goods[:1], grid="auto")
    # an 80x100 image on 2x2 tiles of 70 px: placed at scale 1.4 as 112x140 from row 14, so the first
    # token row of the top tiles and the last of the bottom ones (centres at 7 and 133) are padding
    assert len(few.reference.global_owner) == 16 and len(few.reference.tile_owner) == 4 * 25 - 20
    itself = few.predict(goods[0], grid="auto")
    alone = model.predict(goods[0], grid="auto")
    assert np.abs(itself.anomaly_map - alone.anomaly_map).max() < 1e-4  # few-shot distance 0 everywhere
    with pytest.raises(UserError, match="grid"):
        few.predict(goods[0], grid="fixed")  # a bank answers only for the views it was built from


def test_a_class_draws_the_same_references_whichever_classes_are_tested(with_train_split):
    from dhrclip.engine.evaluation import draw_references

    _, test_root = with_train_split
    config = EvalConfig(data_path=test_root, k_shot=2)
    alone = draw_references(config, ["ring"], 5)["ring"]
    assert draw_references(config, ["checker", "ring"], 5)["ring"] == alone
    assert draw_references(config, ["ring", "checker"], 5)["ring"] == alone
