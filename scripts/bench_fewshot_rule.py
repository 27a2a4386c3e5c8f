"""Accuracy of the few-shot map under two rules for its scale, on the project's synthetic data.

Trains the tiny CLIP's prompts (3 epochs) on two synthetic classes, then tests two other classes
zero-shot and with banks of K = 1, 4 and 16 of their good train images (three draws each), with
the few-shot term combined:

- ``mean`` (the earlier rule): raw distances 1 − cos, averaged over the tapped layers, added to
  the zero-shot map (a sum over the layers); the score adds the map's raw maximum;
- ``units`` (the rule in use): distances in units of twice the bank's own leave-one-out distance,
  summed over the layers like the zero-shot map; the score adds the maximum per layer.

Prints one JSON line per rule and K with the mean pixel and image AUROC over classes and draws, and
with --features_list several values the few-shot map's spread relative to the zero-shot map's.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from dhrclip import DHRCLIP, TrainConfig, train
from dhrclip.config import ModelConfig, RunOptions
from dhrclip.core.maps import combine_views, gaussian_blur, image_scores
from dhrclip.data.canvases import CanvasDataset, Masks, batches, placements
from dhrclip.data.indexing import mvtec_layout_index, write_meta
from dhrclip.data.meta import read_meta
from dhrclip.data.synthetic import save_openai_format, tiny_clip, write_mvtec_dataset
from dhrclip.metrics import image_metrics, pixel_metrics


def maps_and_scores(model: DHRCLIP, items: list, rule: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maps, scores and masks of ``items``: through the library's forward zero-shot (``rule`` None)
    or with the rule in use (``units``), or with the model's bank under the earlier ``mean`` rule."""
    net, run = model.model, RunOptions(batch_size=8, num_workers=0)
    text = net.text_features()
    out_maps, out_scores, out_masks = [], [], []
    dataset = CanvasDataset(items, model.grid_for(run), run, masks=Masks.SCORED)
    with torch.no_grad():
        for batch in batches(dataset):
            if rule != "mean":
                maps, score = net(batch["image"], placements(batch), text)
            else:
                feats = net.encode_views(batch["image"], placements(batch))
                per_layer = [combine_views(g, t, feats.tiles, feats.global_size, net.config.alpha)[:, 0]
                             for g, t in net.reference.token_distances(feats.global_tokens, feats.tile_tokens,
                                                                      feats.global_grid, feats.tile_grid,
                                                                      scaled=False)]
                few = gaussian_blur(torch.stack(per_layer).mean(0), net.config.sigma)
                maps = gaussian_blur(net.anomaly_maps(feats, text).float(), net.config.sigma) + few
                score = (image_scores(net.image_logits(feats, text)) + few.flatten(1).max(dim=1).values) / 2
            out_maps.append(torch.stack(list(maps)).numpy())
            out_scores.append(score.numpy())
            out_masks.append(torch.stack(batch["mask"]).numpy() if isinstance(batch["mask"], list)
                             else batch["mask"].numpy())
    return np.concatenate(out_maps), np.concatenate(out_scores), np.concatenate(out_masks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--features_list", type=int, nargs="+", default=[2, 4])
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="dhrclip_fewshot_rule_") as work:
        work = Path(work)
        source = write_mvtec_dataset(work / "source", ["stripes", "disk"], n_good=3, n_defect=6, n_train=0,
                                     size=(112, 112), seed=3, defect_color=(220, 30, 30))
        write_meta(source, mvtec_layout_index(source))
        target = write_mvtec_dataset(work / "target", ["checker", "ring"], n_good=4, n_defect=8,
                                     n_train=max(args.shots), size=(112, 112), seed=4)
        write_meta(target, mvtec_layout_index(target))
        weights = save_openai_format(tiny_clip(seed=0), work / "tiny.pt")
        config = ModelConfig(pretrained=str(weights), image_size=56, patch_image_size=70, target_image_size=112,
                             features_list=tuple(args.features_list), dpam=3, depth=3, n_ctx=6, t_n_ctx=2)
        train(TrainConfig(data_path=source, save_path=work / "ckpt", epochs=3,
                          run=RunOptions(batch_size=4, num_workers=0, device="cpu")), config)
        model = DHRCLIP.from_checkpoint(work / "ckpt", device="cpu", precision="fp32")
        tests, goods = read_meta(target, "test"), read_meta(target, "train")
        cases = [("zero-shot", 0)] + [(rule, k) for k in args.shots for rule in ("mean", "units")]
        for rule, k in cases:
            pixel, image, spread = [], [], []
            for draw in range(args.draws if k else 1):
                for cls, items in tests.items():
                    rng = np.random.default_rng(1000 * draw + k)
                    refs = [goods[cls][i].image for i in rng.choice(len(goods[cls]), k, replace=False)] if k else []
                    few = model.with_reference(refs, RunOptions(grid="fixed", num_workers=0)) if k else model
                    maps, scores, masks = maps_and_scores(few, items, None if not k else rule)
                    pixel.append(pixel_metrics(masks, maps)["auroc"])
                    image.append(image_metrics(np.array([i.anomaly for i in items]), scores)["auroc"])
                    if k:
                        zero, _, _ = maps_and_scores(model, items, None)
                        spread.append(float(np.std(maps - zero) / np.std(zero)))
            print(json.dumps({"rule": rule, "k": k, "features_list": args.features_list,
                              "pixel_auroc": round(100 * float(np.mean(pixel)), 2),
                              "image_auroc": round(100 * float(np.mean(image)), 2),
                              "few_to_zero_spread": round(float(np.mean(spread)), 3) if spread else None}),
                  flush=True)


if __name__ == "__main__":
    main()
