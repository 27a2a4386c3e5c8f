"""export.py and dhrclip-export: a trained detector as one ONNX file."""
from __future__ import annotations

import argparse

from ..config import ExportConfig
from ..errors import UserError
from .common import (
    add_checkpoint_flag,
    add_model_flags,
    grid_from,
    model_overrides,
    print_config,
    resolved_grid,
    run,
    with_reference,
)
from .flags import add_settings, new_parser, settings_from


def parser() -> argparse.ArgumentParser:
    p = new_parser("Export a trained detector to one ONNX file, for onnxruntime, OpenVINO or TensorRT. Model "
                   "settings default to those the checkpoint was trained with; --precision fp16 exports a "
                   "half-precision vision tower for GPUs.")
    add_checkpoint_flag(p, required=True)
    add_settings(p, ExportConfig, exclude=("precision",))  # the run's: the export has its own
    grid_from(p, "with --threshold_file, the file's")
    add_model_flags(p, from_checkpoint=True)
    return p


def _export(args: argparse.Namespace) -> None:
    from ..deploy.export import export_onnx
    from ..detector.facade import DHRCLIP
    from ..detector.results import Thresholds
    from ..detector.thresholds import read_threshold_file

    saved = read_threshold_file(args.threshold_file) if args.threshold_file is not None else None
    config = settings_from(ExportConfig, args, precision=None,  # --precision is the export's own setting
                           **resolved_grid(args, saved.signature.grid if saved else None, ExportConfig))
    overrides = {k: v for k, v in model_overrides(args).items() if k != "pretrained"}
    if args.print_config:
        print_config(DHRCLIP.resolve_config(args.checkpoint_path, args.pretrained, **overrides))
        return
    if config.output.exists() and not config.overwrite:
        raise UserError(f"output {config.output} exists; choose another file or add --overwrite to replace it",
                        field="output")
    # traced in fp32; --precision fp16 converts the vision tower of the traced copy
    model = DHRCLIP.from_checkpoint(args.checkpoint_path, pretrained=args.pretrained, device=config.run.device,
                                    precision="fp32", **overrides)
    if config.reference is not None:
        model = with_reference(model, config.reference, config.run)
    thresholds = Thresholds()
    if saved is not None:
        if saved.signature.config is None:
            raise UserError(f"{saved.path} records no settings, so it cannot be checked against this export; "
                            f"recalibrate with predict.py --calibrate_on", field="threshold_file")
        saved.check(model.signature(config.run))
        thresholds = saved.thresholds
    path = export_onnx(model, config.output, thresholds, config.exported_precision, config.run, config.opset)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); run it with predict.py --onnx {path} --input ...")


def main(argv: list[str] | None = None) -> None:
    run(_export, parser(), argv)
