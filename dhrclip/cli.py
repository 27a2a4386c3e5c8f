"""Command-line plumbing shared by train.py, test.py, predict.py and demo.py.

Flags keep the reference implementation's names and defaults; new flags use
the same style.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from .backbone import DEFAULT_MODEL, load_clip
from .errors import UserError
from .feature_cache import MODES
from .model import DHRCLIP, DHRConfig

log = logging.getLogger("dhrclip")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that shape the model; train, test and predict share them."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL, help="open_clip architecture (QuickGELU for OpenAI weights)")
    g.add_argument("--pretrained", default="openai",
                   help="open_clip tag, path to a weights file (OpenAI .pt JIT/state dict, open_clip .pt/.bin, "
                        ".safetensors), or 'none' for random weights")
    g.add_argument("--features_list", type=int, nargs="+", default=[6, 12, 18, 24],
                   help="1-based layers whose V-V tokens make the maps (the paper's numbers: 24, see README)")
    g.add_argument("--image_size", type=int, default=336, help="global view size S")
    g.add_argument("--patch_image_size", type=int, default=224, help="tile size P")
    g.add_argument("--target_image_size", type=int, default=448, help="high-resolution canvas size T")
    g.add_argument("--tiles_per_side", type=int, default=2, help="tiles per side g of the canvas")
    g.add_argument("--depth", type=int, default=9, help="deep text prompt depth")
    g.add_argument("--n_ctx", type=int, default=12, help="learned words per prompt")
    g.add_argument("--t_n_ctx", type=int, default=4, help="learned tokens per deep text prompt")
    g.add_argument("--dpam", type=int, default=20, help="the last dpam-1 vision blocks get a V-V path")
    r = parser.add_argument_group("runtime")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                   help="backbone precision (default: bf16 on CUDA, fp32 on CPU)")
    r.add_argument("--batch_size", type=int, default=8, help="images per batch")
    r.add_argument("--num_workers", type=int, default=2, help="DataLoader worker processes")
    r.add_argument("--seed", type=int, default=111)
    r.add_argument("--debug", action="store_true", help="show full tracebacks")


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train DHR-CLIP prompts on one dataset (all of its test split, with masks).")
    p.add_argument("--train_data_path", type=path_arg, default=None,
                   help="dataset root holding meta.json (default ./data/<dataset>)")
    p.add_argument("--save_path", type=path_arg, default=path_arg("./checkpoint"), help="where epoch_N.pth go")
    p.add_argument("--dataset", default="mvtec", help="name of the training dataset, for logs")
    p.add_argument("--epoch", type=int, default=15)
    p.add_argument("--learning_rate", type=float, default=0.001)
    p.add_argument("--print_freq", type=int, default=1, help="log the loss every N epochs")
    p.add_argument("--save_freq", type=int, default=1, help="write a checkpoint every N epochs")
    p.add_argument("--image_loss_weight", type=float, default=0.0,
                   help="weight of the image-level cross-entropy (the reference computes it but adds 0)")
    p.add_argument("--feature_cache", choices=MODES, default="auto",
                   help="keep encoded views after epoch 1: auto picks device, host memory or disk by size")
    p.add_argument("--resume", type=path_arg, default=None, help="continue from the last epoch_N.pth in this folder")
    add_model_arguments(p)
    return p



def evaluation_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Test DHR-CLIP prompts zero-shot on a dataset: per-class table, log.txt and results.json.")
    p.add_argument("--data_path", type=path_arg, default=None, help="dataset root holding meta.json "
                   "(default ./data/<dataset>)")
    p.add_argument("--save_path", type=path_arg, default=path_arg("./results"), help="where the results go")
    p.add_argument("--checkpoint_path", type=path_arg, default=path_arg("./checkpoint"),
                   help="prompt checkpoint file, or a folder (its latest epoch_N.pth)")
    p.add_argument("--dataset", default="mvtec", help="name of the test dataset, for logs and the default path")
    p.add_argument("--classes", nargs="+", default=None, help="test only these classes of meta.json")
    p.add_argument("--metrics", choices=["image-level", "pixel-level", "image-pixel-level"],
                   default="image-pixel-level")
    p.add_argument("--sigma", type=float, default=8, help="Gaussian smoothing of the maps (0: none)")
    p.add_argument("--map_norm", choices=["per-image", "none"], default="per-image",
                   help="min-max normalise each map (the reference's convention) or keep raw scores")
    p.add_argument("--aupro", choices=["exact", "legacy"], default="exact",
                   help="exact MVTec AUPRO, or the reference's 200-threshold value for comparing with its tables")
    p.add_argument("--vis", action="store_true", help="write per-image figures with the ground truth")
    add_model_arguments(p)
    return p



def config_from_args(args: argparse.Namespace) -> DHRConfig:
    return DHRConfig(
        image_size=args.image_size, patch_image_size=args.patch_image_size,
        target_image_size=args.target_image_size, tiles_per_side=args.tiles_per_side,
        features_list=list(args.features_list), dpam=args.dpam, depth=args.depth, n_ctx=args.n_ctx,
        t_n_ctx=args.t_n_ctx,
    )


def build_model(args: argparse.Namespace, device: torch.device) -> DHRCLIP:
    """Backbone from --model/--pretrained with fresh prompts, on ``device``."""
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {args.batch_size}")
    for flag in ("image_size", "patch_image_size", "target_image_size"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be positive, got {getattr(args, flag)}")
    config = config_from_args(args)
    model = DHRCLIP(load_clip(args.model, args.pretrained), config)
    return model.to(device)


def run(main: Callable[[argparse.Namespace], object], parser: argparse.ArgumentParser,
        argv: list[str] | None = None) -> None:
    """Parse flags and run ``main``; user mistakes end as one line on stderr with status 2."""
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        main(args)
    except (UserError, torch.cuda.OutOfMemoryError) as exc:
        if debug:
            raise
        message = one_line(exc) if isinstance(exc, UserError) else (
            f"CUDA ran out of memory at --batch_size {args.batch_size}; try a smaller --batch_size")
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def plain_config(args: argparse.Namespace) -> dict:
    """Flags as JSON-able plain values (checkpoints load with weights_only)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def one_line(exc: UserError) -> str:
    """The user's message, also when a DataLoader worker wrapped it in its traceback."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(f"{UserError.__name__}: ", 1)[-1]
    return text


def path_arg(value: str) -> Path:
    return Path(value).expanduser()
