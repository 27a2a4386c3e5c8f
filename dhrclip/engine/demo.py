"""The embedded default: the whole protocol on synthetic data, on any machine.

Two MVTec-layout datasets with disjoint classes are synthesised and indexed
with the real generator. The zero-shot table on the held-out classes is
printed with untrained prompts, the prompts are trained on the other classes,
and the table is printed again, with heatmap figures. With real CLIP weights
the numbers mean something; without them a small random CLIP stands in, and
the demo says so.

Every defect is painted in one colour that no texture or object uses. A random
network's features can tell that colour apart, so the demo can show the
prompts learning to separate defect features from normal ones; recognising
real defects by what they are is what real CLIP weights are for.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import DemoConfig, EvalConfig, ModelConfig, TrainConfig
from ..core.runtime import seed_everything
from ..data.indexing import mvtec_layout_index, write_meta
from ..data.synthetic import save_openai_format, tiny_clip, write_mvtec_dataset
from ..detector.facade import DHRCLIP
from ..errors import UserError
from .evaluation import evaluate
from .training import train

log = logging.getLogger(__name__)

SOURCE_CLASSES = ["stripes", "grain", "disk", "square"]
TARGET_CLASSES = ["checker", "waves", "ring", "pill"]
DEFECT_COLOR = (220, 30, 30)
SEED = 111
# The tiny random CLIP (patch 14) at the paper's MVTec test geometry, S=P=336 on a 672 canvas, tapping
# its last layer; with real weights, the authors' small configuration.
TINY: dict[str, Any] = dict(image_size=336, patch_image_size=336, target_image_size=672, features_list=(4,), dpam=4,
                            depth=3, n_ctx=12, t_n_ctx=4)
REAL: dict[str, Any] = dict(image_size=224, patch_image_size=224, target_image_size=448, features_list=(24,))
EPOCHS = {"tiny": 15, "real": 3}


def _backbone(model: str, pretrained: str, out: Path, device: str) -> tuple[DHRCLIP, bool]:
    """The detector on real weights when they can be had, else on a tiny random CLIP file."""
    if pretrained.lower() != "none":
        try:
            return DHRCLIP.create(ModelConfig(model=model, pretrained=pretrained, **REAL), device=device), True
        except UserError as exc:
            print(f"\nReal CLIP weights are not available here: {exc}\n")
    path = save_openai_format(tiny_clip(seed=0), out / "tiny_random_clip.pt")
    print("USING A SMALL RANDOMLY INITIALISED CLIP (4+4 layers, no pretraining).\n"
          "The pipeline below runs for real, and the prompts learn to separate the painted defects' features,\n"
          "but these numbers say nothing about DHR-CLIP's accuracy on real parts; give the real weights as\n"
          "pretrained (a tag or /path/to/ViT-L-14-336px.pt) for meaningful results.\n")
    return DHRCLIP.create(ModelConfig(pretrained=str(path), **TINY), device=device), False


def run_demo(config: DemoConfig | None = None) -> dict:
    """Synthesise, index, test untrained, train, test again. Returns {"untrained", "trained"}:
    test.py's results dicts on the held-out classes before and after training."""
    config = config or DemoConfig()
    started = time.perf_counter()
    out = config.save_path
    run = replace(config.run, batch_size=8, seed=SEED)
    common: dict[str, Any] = dict(n_good=4, n_defect=6, n_train=2, defect_color=DEFECT_COLOR)
    source = write_mvtec_dataset(out / "data" / "source", SOURCE_CLASSES, size=(96, 96), seed=1, **common)
    target = write_mvtec_dataset(out / "data" / "target", TARGET_CLASSES, size=(96, 128), seed=2, **common)
    for root in (source, target):
        write_meta(root, mvtec_layout_index(root))
    seed_everything(SEED)  # the untrained prompts, too, are the same on every run
    detector, real = _backbone(config.model, config.pretrained, out, run.device)
    epochs = config.epochs or EPOCHS["real" if real else "tiny"]
    held_out = ", ".join(TARGET_CLASSES)

    print(f"\nZero-shot on the held-out classes ({held_out}) with UNTRAINED prompts:")
    untrained = evaluate(detector, EvalConfig(data_path=target, dataset="synthetic-target",
                                              save_path=out / "results_untrained", run=run))
    print(f"\nTraining the prompts on {', '.join(SOURCE_CLASSES)} for {epochs} epochs ...")
    train(TrainConfig(data_path=source, dataset="synthetic-source", save_path=out / "checkpoint", epochs=epochs,
                      save_freq=epochs, run=run), detector)
    print(f"\nZero-shot on the same held-out classes ({held_out}) with the TRAINED prompts:")
    trained = evaluate(detector, EvalConfig(data_path=target, dataset="synthetic-target", save_path=out / "results",
                                            vis=True, run=run))

    before, after = untrained["mean"]["pixel_auroc"], trained["mean"]["pixel_auroc"]
    print(f"\nMean pixel AUROC on the held-out classes: {100 * before:.1f} untrained -> {100 * after:.1f} trained "
          f"({'real CLIP weights' if real else 'tiny RANDOM CLIP'}), {time.perf_counter() - started:.0f} s.")
    figures = out / "results" / "vis"
    examples = sorted(p for p in figures.rglob("*.png") if not p.name.startswith("good_"))[:3]
    print(f"Heatmaps (input | map | ground truth) in {figures}/<class>/, e.g.\n" +
          "\n".join(f"  {p}" for p in examples))
    print(f"Results: {out / 'results' / 'results.json'} (untrained: {out / 'results_untrained' / 'results.json'})")
    if not real:
        print("Image-level scores come from the global embeddings, which carry little of a small defect in a "
              "random CLIP;\nthe pixel maps are what this demo shows.")
    return {"untrained": untrained, "trained": trained}

