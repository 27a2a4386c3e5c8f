"""The embedded default: the whole protocol on synthetic data, on any machine.

Two MVTec-layout datasets with disjoint classes are synthesised and indexed
with the real generator; prompts are trained on one and tested zero-shot on
the other; the table is printed and heatmap overlays are written. With real
CLIP weights the numbers mean something; without them a small random CLIP
stands in, and the demo says so.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from .backbone import DEFAULT_MODEL, load_clip
from .cli import evaluation_parser, train_parser
from .errors import UserError
from .evaluation import evaluate
from .indexing import mvtec_layout_index, write_meta
from .synthetic import save_openai_format, tiny_clip, write_mvtec_dataset
from .training import train

log = logging.getLogger(__name__)

SOURCE_CLASSES = ["stripes", "grain", "disk", "square"]
TARGET_CLASSES = ["checker", "waves", "ring", "pill"]
# Sizes: the tiny random CLIP (patch 14, 56 px native) and, with real weights, the paper's small run config.
TINY_FLAGS = ["--image_size", "56", "--patch_image_size", "70", "--target_image_size", "112",
              "--features_list", "2", "4", "--dpam", "3", "--depth", "3", "--n_ctx", "12", "--t_n_ctx", "4"]
REAL_FLAGS = ["--image_size", "224", "--patch_image_size", "224", "--target_image_size", "448",
              "--features_list", "24"]


def demo_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--save_path", type=Path, default=Path("./demo_output"))
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--pretrained", default="openai", help="tag or weights file; 'none' forces the tiny random CLIP")
    p.add_argument("--epoch", type=int, default=None, help="training epochs (default 8 tiny, 3 real)")
    p.add_argument("--device", default="auto")
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--debug", action="store_true")
    return p


def _backbone_flags(args: argparse.Namespace, out: Path) -> tuple[list[str], bool]:
    """Flags for the real weights when they can be had, else for a tiny random CLIP file."""
    if args.pretrained.lower() != "none":
        try:
            load_clip(args.model, args.pretrained)
            return ["--model", args.model, "--pretrained", args.pretrained, *REAL_FLAGS], True
        except UserError as exc:
            print(f"\nReal CLIP weights are not available here: {exc}\n")
    path = save_openai_format(tiny_clip(seed=0), out / "tiny_random_clip.pt")
    print("USING A SMALL RANDOMLY INITIALISED CLIP (4+4 layers, no pretraining).\n"
          "The pipeline below runs for real, but its numbers say nothing about DHR-CLIP's accuracy;\n"
          "pass --pretrained /path/to/ViT-L-14-336px.pt for meaningful results.\n")
    return ["--pretrained", str(path), *TINY_FLAGS], False


def run_demo(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    out = args.save_path
    source = write_mvtec_dataset(out / "data" / "source", SOURCE_CLASSES, n_good=4, n_defect=6, n_train=2,
                                 size=(96, 96), seed=1)
    target = write_mvtec_dataset(out / "data" / "target", TARGET_CLASSES, n_good=4, n_defect=6, n_train=2,
                                 size=(96, 128), seed=2)
    for root in (source, target):
        write_meta(root, mvtec_layout_index(root))
    flags, real = _backbone_flags(args, out)
    epochs = args.epoch or (3 if real else 8)
    common = [*flags, "--device", args.device, "--num_workers", str(args.num_workers), "--batch_size", "8"]
    train(train_parser().parse_args(["--train_data_path", str(source), "--dataset", "synthetic-source",
                                     "--save_path", str(out / "checkpoint"), "--epoch", str(epochs),
                                     "--save_freq", str(epochs), *common]))
    results = evaluate(evaluation_parser().parse_args([
        "--data_path", str(target), "--dataset", "synthetic-target", "--save_path", str(out / "results"),
        "--checkpoint_path", str(out / "checkpoint"), "--vis", *common]))
    print(f"\nTrained on {', '.join(SOURCE_CLASSES)}; tested zero-shot on {', '.join(TARGET_CLASSES)}"
          f" ({'real CLIP weights' if real else 'tiny RANDOM CLIP'}), {time.perf_counter() - started:.0f} s.")
    print(f"Results: {out / 'results' / 'results.json'}; heatmaps: {out / 'results' / 'vis'}/<class>/")
    return results
