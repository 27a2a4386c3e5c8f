"""The model flags and the detector the grid and few-shot benchmarks share."""
from __future__ import annotations

import argparse
from pathlib import Path

from dhrclip import DHRCLIP
from dhrclip.config import ModelConfig
from dhrclip.data.synthetic import save_openai_format, tiny_clip


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pretrained", default=None, help="weights file (default: a tiny random CLIP)")
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--patch_image_size", type=int, default=224)
    parser.add_argument("--target_image_size", type=int, default=448)
    parser.add_argument("--features_list", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--dpam", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default=None)


def build_model(args: argparse.Namespace, work: Path) -> DHRCLIP:
    """A detector with untrained prompts on ``--pretrained`` (a tiny random CLIP written to ``work``)."""
    weights = args.pretrained or str(save_openai_format(tiny_clip(seed=0), work / "tiny.pt"))
    config = ModelConfig(model=args.model, pretrained=weights, image_size=args.image_size,
                         patch_image_size=args.patch_image_size, target_image_size=args.target_image_size,
                         features_list=tuple(args.features_list), dpam=args.dpam, depth=3, n_ctx=6, t_n_ctx=2)
    return DHRCLIP.create(config, device=args.device, precision=args.precision)
