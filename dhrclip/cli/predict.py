"""predict.py and dhrclip-predict: maps, scores and decisions for your own images, from a checkpoint
or an exported ONNX file."""
from __future__ import annotations

import argparse
import sys

from ..config import PredictConfig
from ..errors import UserError
from .common import (
    EXIT_SKIPPED,
    add_checkpoint_flag,
    add_model_flags,
    grid_from,
    join_processes,
    load_detector,
    model_overrides,
    resolved_grid,
    run,
)
from .flags import add_settings, default_of, new_parser, path_arg, settings_from


def parser() -> argparse.ArgumentParser:
    p = new_parser("Anomaly maps, scores and decisions for your own images. Model settings default to those "
                   "the checkpoint was trained with.")
    add_checkpoint_flag(p, default=None)
    p.add_argument("--onnx", type=path_arg, default=None,
                   help="an exported model (export.py) to run with onnxruntime instead of --checkpoint_path")
    add_settings(p, PredictConfig)
    grid_from(p, "with --onnx, the file's")
    add_model_flags(p, from_checkpoint=True)
    return p


def _check_onnx_flags(args: argparse.Namespace) -> None:
    """What an exported file fixes cannot be asked of it."""
    given = [name for name, value in model_overrides(args).items() if value is not None]
    if given:
        raise UserError(f"{given[0]} is fixed inside the exported file; export again to change it", field=given[0])
    if args.reference is not None:
        raise UserError("reference banks are baked into the file at export (export.py --reference)",
                        field="reference")
    if args.print_config:
        raise UserError("print_config reads a checkpoint; an exported file's settings are in its metadata",
                        field="print_config")
    if args.precision is not None:
        raise UserError("precision is fixed inside the exported file (export.py --precision)", field="precision")


def _onnx_providers(device: str) -> list[str]:
    """onnxruntime's execution providers for --device: CUDA's (with the CPU for what it lacks) or the CPU's."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise UserError("running an ONNX file needs onnxruntime: pip install -e '.[deploy]' (or pip install "
                        "onnxruntime)", field="onnx") from exc

    available = onnxruntime.get_available_providers()
    if device.startswith("cuda") or (device == "auto" and "CUDAExecutionProvider" in available):
        if "CUDAExecutionProvider" not in available:
            raise UserError(f"device {device}: this onnxruntime has no CUDA provider (install onnxruntime-gpu)",
                            field="device")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device not in ("auto", "cpu"):
        raise UserError(f"device {device} is not one onnxruntime runs on here; use cpu or cuda", field="device")
    return ["CPUExecutionProvider"]


def _predict(args: argparse.Namespace) -> None:
    from ..engine.prediction import check_save_path, predict

    if (args.onnx is None) == (args.checkpoint_path is None):
        raise UserError("give either checkpoint_path (the PyTorch model) or onnx (an exported file)",
                        field="checkpoint_path")
    onnx = None
    if args.onnx is not None:
        from ..deploy.runtime import OnnxDetector

        _check_onnx_flags(args)
        join_processes("cpu")  # under torchrun the inputs are shared out (gloo), whichever device runs the graph
        if args.runtime == "openvino" and args.device not in ("auto", "cpu"):
            raise UserError(f"device {args.device}: runtime openvino runs here on the CPU; use device cpu",
                            field="device")
        providers = _onnx_providers(args.device) if args.runtime == "onnxruntime" else None
        onnx = OnnxDetector(args.onnx, providers, runtime=args.runtime)
    elif args.runtime != default_of(PredictConfig, "runtime"):
        raise UserError("runtime chooses what runs an exported file; give it with onnx", field="runtime")
    config = settings_from(PredictConfig, args, **resolved_grid(args, onnx.metadata.signature.grid if onnx else None,
                                                                PredictConfig))
    if not args.print_config:  # a wrong input or output folder fails before the model loads
        from ..data.images import collect_images

        collect_images(config.input, exclude=config.save_path)
        check_save_path(config)
    model = onnx if onnx is not None else load_detector(args, config.run)
    if model is not None and any(row["error"] for row in predict(model, config)):
        sys.exit(EXIT_SKIPPED)


def main(argv: list[str] | None = None) -> None:
    run(_predict, parser(), argv)

