"""End to end: testing against the independent implementation of the method, batch invariance, training."""
import json

import numpy as np
import pytest
import torch
from conftest import SMALL, SMALL_MODEL, reference_checkpoint, run_items, small_config
from sklearn.metrics import average_precision_score, roc_auc_score
from spec_reference import slow_image, slow_pixel_metrics, slow_text

from dhrclip import DHRCLIP, cli
from dhrclip.data.canvases import resize_mask
from dhrclip.data.images import load_mask
from dhrclip.data.meta import read_meta

# A reference-format checkpoint has no settings; these are the tiny model's (its prompt shapes come from the file).
SMALL_GEOMETRY = {k: v for k, v in SMALL_MODEL.items() if k not in ("depth", "n_ctx", "t_n_ctx")}






def test_test_py_agrees_with_independent_implementation_of_the_method(tmp_path, clip_file, target_data):
    ckpt = tmp_path / "epoch_15.pth"
    state = reference_checkpoint(ckpt)
    argv = ["--data_path", str(target_data), "--save_path", str(tmp_path / "out"), "--checkpoint_path", str(ckpt),
            "--pretrained", str(clip_file), *SMALL]
    cli.test_main(argv)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["classes"].keys() == {"checker", "ring"}
    assert set(saved["mean"]) == {"pixel_auroc", "pixel_aupro", "pixel_f1max", "pixel_ap",
                                  "image_auroc", "image_ap", "image_f1max"}

    clip = DHRCLIP.create(small_config(clip_file), device="cpu").model.clip
    library = DHRCLIP.from_checkpoint(ckpt, pretrained=str(clip_file), device="cpu", **SMALL_GEOMETRY)
    with torch.no_grad():
        text = slow_text(clip, state["ctx_pos"][0, 0], state["ctx_neg"][0, 0],
                         [state[f"compound_prompts_text.{i}"] for i in range(2)])
        for cls, items in read_meta(target_data, "test").items():
            maps, masks, scores = [], [], []
            for item in items:
                m, s = slow_image(clip, text, item.image, S=56, P=70, T=112, layers=[2, 4], dpam=3)
                maps.append(m)
                scores.append(s)
                mask = load_mask(item.masks) if item.masks else np.zeros(m.shape, bool)
                masks.append(resize_mask(mask, 112).numpy() if item.masks else mask)
            # the library's maps and scores, image by image, against the independent ones
            got_maps, _, got_scores = run_items(library, items)
            assert np.allclose(got_maps.astype(np.float64), np.stack(maps), atol=5e-4), cls  # float16 storage
            assert np.allclose(got_scores, scores, atol=1e-5), cls
            want = slow_pixel_metrics(np.stack(masks), np.stack(maps))
            labels = [item.anomaly for item in items]
            want.update(image_auroc=roc_auc_score(labels, scores), image_ap=average_precision_score(labels, scores))
            for name, value in want.items():
                assert saved["classes"][cls][name] == pytest.approx(value, abs=0.005), (cls, name)














def test_bf16_pixel_auroc_is_within_0_2_points_of_fp32(tmp_path, clip_file, target_data):
    from dhrclip.metrics import pixel_metrics
    items = [i for v in read_meta(target_data, "test").values() for i in v]
    reference_checkpoint(tmp_path / "prompts.pth")
    aurocs = {}
    for precision in ("fp32", "bf16"):
        model = DHRCLIP.from_checkpoint(tmp_path / "prompts.pth", pretrained=str(clip_file), device="cpu",
                                        precision=precision, **SMALL_GEOMETRY)
        maps, masks, _ = run_items(model, items)
        aurocs[precision] = pixel_metrics(masks, maps)["auroc"]
    assert abs(aurocs["fp32"] - aurocs["bf16"]) <= 0.002


