"""The embedded default: the whole protocol on synthetic data, on any machine.

Two MVTec-layout datasets with disjoint classes are synthesised and indexed
with the real generator; prompts are trained on one and tested zero-shot on
the other; the table is printed and heatmap overlays are written. With real
CLIP weights the numbers mean something; without them a small random CLIP
stands in, and the demo says so.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from .config import DEFAULT_MODEL, EvalConfig, ModelConfig, TrainConfig
from .detector import DHRCLIP
from .errors import UserError
from .evaluation import evaluate
from .indexing import mvtec_layout_index, write_meta
from .synthetic import save_openai_format, tiny_clip, write_mvtec_dataset
from .training import train

log = logging.getLogger(__name__)

SOURCE_CLASSES = ["stripes", "grain", "disk", "square"]
TARGET_CLASSES = ["checker", "waves", "ring", "pill"]
# Sizes: the tiny random CLIP (patch 14, 56 px native) and, with real weights, the paper's small run config.
TINY = dict(image_size=56, patch_image_size=70, target_image_size=112, features_list=(2, 4), dpam=3, depth=3,
            n_ctx=12, t_n_ctx=4)
REAL = dict(image_size=224, patch_image_size=224, target_image_size=448, features_list=(24,))


def _backbone(model: str, pretrained: str, out: Path, device: str) -> tuple[DHRCLIP, bool]:
    """The detector on real weights when they can be had, else on a tiny random CLIP file."""
    if pretrained.lower() != "none":
        try:
            return DHRCLIP.create(ModelConfig(model=model, pretrained=pretrained, **REAL), device=device), True
        except UserError as exc:
            print(f"\nReal CLIP weights are not available here: {exc}\n")
    path = save_openai_format(tiny_clip(seed=0), out / "tiny_random_clip.pt")
    print("USING A SMALL RANDOMLY INITIALISED CLIP (4+4 layers, no pretraining).\n"
          "The pipeline below runs for real, but its numbers say nothing about DHR-CLIP's accuracy;\n"
          "give the real weights as pretrained (a tag or /path/to/ViT-L-14-336px.pt) for meaningful results.\n")
    return DHRCLIP.create(ModelConfig(pretrained=str(path), **TINY), device=device), False


def run_demo(save_path: Path = Path("./demo_output"), model: str = DEFAULT_MODEL, pretrained: str = "openai",
             epochs: int | None = None, device: str = "auto", num_workers: int | str = "auto") -> dict:
    """Synthesise, index, train, test; returns test.py's results dict."""
    started = time.perf_counter()
    out = Path(save_path)
    source = write_mvtec_dataset(out / "data" / "source", SOURCE_CLASSES, n_good=4, n_defect=6, n_train=2,
                                 size=(96, 96), seed=1)
    target = write_mvtec_dataset(out / "data" / "target", TARGET_CLASSES, n_good=4, n_defect=6, n_train=2,
                                 size=(96, 128), seed=2)
    for root in (source, target):
        write_meta(root, mvtec_layout_index(root))
    detector, real = _backbone(model, pretrained, out, device)
    epochs = epochs or (3 if real else 8)
    train(TrainConfig(data_path=source, dataset="synthetic-source", save_path=out / "checkpoint", epochs=epochs,
                      save_freq=epochs, batch_size=8, num_workers=num_workers), detector)
    results = evaluate(detector, EvalConfig(data_path=target, dataset="synthetic-target", save_path=out / "results",
                                            vis=True, batch_size=8, num_workers=num_workers))
    print(f"\nTrained on {', '.join(SOURCE_CLASSES)}; tested zero-shot on {', '.join(TARGET_CLASSES)}"
          f" ({'real CLIP weights' if real else 'tiny RANDOM CLIP'}), {time.perf_counter() - started:.0f} s.")
    print(f"Results: {out / 'results' / 'results.json'}; heatmaps: {out / 'results' / 'vis'}/<class>/")
    print(f"Your own images with these prompts (the checkpoint brings back its settings):\n"
          f"  python predict.py --checkpoint_path {detector.checkpoint} --input YOUR_IMAGES/ "
          f"--save_path predictions/")
    return results
