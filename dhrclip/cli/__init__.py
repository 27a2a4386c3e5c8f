"""The command line: train.py, test.py, predict.py, app.py, demo.py and the ``dhrclip-*`` commands.

Flags keep the reference implementation's names and defaults; new flags use
the same style. This is the only module that knows about flags: it turns them
into the typed settings of ``dhrclip.config`` and calls the library. Parsing
needs neither torch nor the model, so ``--help`` is immediate; the library is
imported once the flags are parsed.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import (AUPRO_MODES, DEFAULT_MODEL, FEATURE_CACHE_MODES, FIGURE_SCALES, GRID_MODES, MAP_NORMS,
                     METRIC_LEVELS, ON_ERROR, PRECISIONS, EvalConfig, ModelConfig, PredictConfig, ResolvedConfig,
                     TrainConfig, resolve_model_config)
from ..errors import UserError

if TYPE_CHECKING:  # annotations only: --help must not import torch
    from ..detector.facade import DHRCLIP

log = logging.getLogger("dhrclip")

MODEL_FLAGS = ("model", "pretrained", "features_list", "image_size", "patch_image_size", "target_image_size",
               "tiles_per_side", "depth", "n_ctx", "t_n_ctx", "dpam", "sigma")
# predict.py's exit status when some images could not be read (they have error rows).
EXIT_SKIPPED = 3
# Settings whose flag has another name than the field.
FLAG_ALIASES = {"epochs": ("epoch",)}
_DEFAULTS = ModelConfig()


class _HelpFormatter(argparse.HelpFormatter):
    """Shows "(default: X)" for every flag with a default other than None."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, argparse.SUPPRESS, False) and "default" not in text:
            shown = " ".join(map(str, action.default)) if isinstance(action.default, list) else action.default
            text += f" (default: {shown})"
        return text


def _parser(description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)


def path_arg(value: str) -> Path:
    return Path(value).expanduser()


def workers_arg(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number, got {value!r}") from None


def add_model_arguments(parser: argparse.ArgumentParser, from_checkpoint: bool) -> None:
    """Flags that shape the model. With ``from_checkpoint`` they default to what the
    checkpoint recorded; otherwise to the authors' settings."""
    def default(name: str) -> str:
        value = getattr(_DEFAULTS, name)
        shown = " ".join(map(str, value)) if isinstance(value, tuple) else value
        return f"default: the checkpoint's; new models {shown}" if from_checkpoint else f"default: {shown}"

    g = parser.add_argument_group("model (saved in every checkpoint)")
    g.add_argument("--model", help=f"open_clip architecture, QuickGELU for OpenAI weights ({default('model')})")
    g.add_argument("--pretrained",
                   help="open_clip tag, path to a weights file (OpenAI .pt JIT/state dict, open_clip .pt/.bin, "
                        f".safetensors), or 'none' for random weights ({default('pretrained')})")
    g.add_argument("--features_list", type=int, nargs="+",
                   help=f"1-based layers whose V-V tokens make the maps; the paper's numbers: 24, see README "
                        f"({default('features_list')})")
    g.add_argument("--image_size", type=int, help=f"global view size S ({default('image_size')})")
    g.add_argument("--patch_image_size", type=int, help=f"tile size P ({default('patch_image_size')})")
    g.add_argument("--target_image_size", type=int, help=f"high-resolution canvas size T "
                                                         f"({default('target_image_size')})")
    g.add_argument("--tiles_per_side", type=int, help=f"tiles per side g of the canvas ({default('tiles_per_side')})")
    g.add_argument("--depth", type=int, help=f"deep text prompt depth ({default('depth')})")
    g.add_argument("--n_ctx", type=int, help=f"learned words per prompt ({default('n_ctx')})")
    g.add_argument("--t_n_ctx", type=int, help=f"learned tokens per deep text prompt ({default('t_n_ctx')})")
    g.add_argument("--dpam", type=int, help=f"the last dpam-1 vision blocks get a V-V path ({default('dpam')})")
    g.add_argument("--sigma", type=float, help=f"Gaussian smoothing of the maps, 0 for none ({default('sigma')})")
    r = parser.add_argument_group("runtime")
    r.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    r.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="vision-tower precision (default: bf16 on CUDA, fp32 on CPU; the text tower is always fp32)")
    r.add_argument("--batch_size", type=int, default=8, help="images per batch")
    r.add_argument("--num_workers", type=workers_arg, default="auto",
                   help="DataLoader worker processes; auto: none for small jobs, up to 4 for large ones")
    r.add_argument("--bit_depth", type=int, default=None,
                   help="significant bits of 16-bit images (default: the PNG's sBIT chunk, else inferred from "
                        "each image's maximum as 10, 12, 14 or 16)")
    r.add_argument("--seed", type=int, default=111, help="random seed")
    r.add_argument("--print_config", action="store_true",
                   help="print the effective model settings and where each comes from, then exit")
    r.add_argument("--debug", action="store_true", help="show full tracebacks")


def add_grid_arguments(parser: argparse.ArgumentParser, default: str | None) -> None:
    """--grid and --max_tiles; a ``default`` of None means auto, or fixed with --onnx."""
    g = parser.add_argument_group("dynamic resolution")
    meaning = ("fixed: every image squashed to the T×T canvas and cut into g×g tiles (the published method); "
               "auto: each image gets its own grid of P-pixel tiles at its own aspect ratio")
    g.add_argument("--grid", choices=GRID_MODES, default=default,
                   help=meaning + (" (default: auto; fixed with --onnx)" if default is None else ""))
    g.add_argument("--max_tiles", type=int, default=9, help="with --grid auto: at most this many tiles per image")


def train_parser() -> argparse.ArgumentParser:
    p = _parser("Train DHR-CLIP prompts on one dataset (all of its test split, with masks).")
    p.add_argument("--train_data_path", type=path_arg, default=None,
                   help="dataset root holding meta.json (default: ./data/<dataset>)")
    p.add_argument("--save_path", type=path_arg, default=Path("./checkpoint"), help="where epoch_N.pth go")
    p.add_argument("--dataset", default=None,
                   help="name of the training dataset, for logs (default: the data folder's name; the default "
                        "data path is ./data/mvtec)")
    p.add_argument("--epoch", type=int, default=15)
    p.add_argument("--learning_rate", type=float, default=0.001)
    p.add_argument("--print_freq", type=int, default=1, help="log the loss every N epochs")
    p.add_argument("--save_freq", type=int, default=1, help="write a checkpoint every N epochs")
    p.add_argument("--image_loss_weight", type=float, default=0.0,
                   help="weight of the image-level cross-entropy on the global view (the authors: computed, weight 0)")
    p.add_argument("--feature_cache", choices=FEATURE_CACHE_MODES, default="auto",
                   help="keep encoded views after epoch 1: auto picks device, host memory or disk by size")
    p.add_argument("--resume", type=path_arg, default=None,
                   help="continue from the last epoch_N.pth in this folder, with its settings")
    add_grid_arguments(p, "fixed")
    add_model_arguments(p, from_checkpoint=False)
    return p


def evaluation_parser() -> argparse.ArgumentParser:
    p = _parser("Test DHR-CLIP prompts zero-shot on a dataset: per-class table, log.txt and results.json. "
                "Model settings default to those the checkpoint was trained with.")
    p.add_argument("--data_path", type=path_arg, default=None,
                   help="dataset root holding meta.json (default: ./data/<dataset>)")
    p.add_argument("--save_path", type=path_arg, default=Path("./results"), help="where the results go")
    p.add_argument("--checkpoint_path", type=path_arg, default=Path("./checkpoint"),
                   help="prompt checkpoint file, or a folder (its latest epoch_N.pth)")
    p.add_argument("--dataset", default=None,
                   help="name of the test dataset, for logs and the default path (default: the data folder's name)")
    p.add_argument("--classes", nargs="+", default=None, help="test only these classes of meta.json")
    p.add_argument("--metrics", choices=METRIC_LEVELS, default="image-pixel-level")
    p.add_argument("--map_norm", choices=MAP_NORMS, default="per-image",
                   help="min-max normalise each map (the reference's convention) or keep raw scores")
    p.add_argument("--aupro", choices=AUPRO_MODES, default="exact",
                   help="exact MVTec AUPRO, or the reference's 200-threshold value for comparing with its tables "
                        "(legacy keeps each class's maps in host memory; exact keeps only histograms)")
    p.add_argument("--vis", action="store_true", help="write per-image figures with the ground truth")
    p.add_argument("--k_shot", type=int, default=0,
                   help="few-shot: a reference bank of K good images per class from the train split of meta.json, "
                        "drawn with --seed (0: zero-shot)")
    p.add_argument("--k_shot_runs", type=int, default=1,
                   help="few-shot draws (seeds --seed, --seed+1, ...), reported as mean ± std")
    add_grid_arguments(p, "fixed")
    add_model_arguments(p, from_checkpoint=True)
    return p


def suite_parser() -> argparse.ArgumentParser:
    p = _parser("Test one checkpoint zero-shot on every benchmark dataset under a data root (one folder per "
                "dataset, named as its generator in generate_dataset_json/), indexing those without a meta.json; "
                "writes one combined table (suite.md, suite.json) and each dataset's results.")
    p.add_argument("--checkpoint_path", type=path_arg, required=True,
                   help="prompt checkpoint file, or a folder (its latest epoch_N.pth)")
    p.add_argument("--data_path", type=path_arg, required=True, help="data root holding one folder per dataset")
    p.add_argument("--save_path", type=path_arg, default=Path("./results/zero_shot_suite"),
                   help="where the combined table and each dataset's results go")
    p.add_argument("--datasets", nargs="+", default=None, metavar="NAME",
                   help="only these datasets (default: every known one that is present)")
    p.add_argument("--reindex", action="store_true",
                   help="rebuild every present dataset's meta.json (default: use an existing one)")
    p.add_argument("--metrics", choices=METRIC_LEVELS, default="image-pixel-level")
    p.add_argument("--k_shot", type=int, default=0,
                   help="few-shot: K good train images per class as the reference bank (0: zero-shot)")
    p.add_argument("--k_shot_runs", type=int, default=1, help="few-shot draws, reported as mean ± std")
    add_grid_arguments(p, "fixed")
    add_model_arguments(p, from_checkpoint=True)
    return p


def prediction_parser() -> argparse.ArgumentParser:
    p = _parser("Anomaly maps, scores and decisions for your own images. Model settings default to those "
                "the checkpoint was trained with.")
    p.add_argument("--checkpoint_path", type=path_arg, default=None, help="prompt checkpoint file or folder")
    p.add_argument("--onnx", type=path_arg, default=None,
                   help="an exported model (export.py) to run with onnxruntime instead of --checkpoint_path")
    p.add_argument("--input", required=True, help="an image, a folder (searched recursively) or a glob pattern")
    p.add_argument("--save_path", type=path_arg, default=Path("./predictions"), help="output folder")
    p.add_argument("--threshold", type=float, default=None, help="image-score threshold")
    p.add_argument("--pixel_threshold", type=float, default=None,
                   help="map threshold: outline, and 'anomalous' where exceeded")
    p.add_argument("--threshold_file", type=path_arg, default=None,
                   help="a threshold.json written by calibration (refused for other settings or checkpoints)")
    p.add_argument("--calibrate_on", default=None, help="folder (or glob) of known-good images to set thresholds")
    p.add_argument("--calibrate_quantile", type=float, default=1.0,
                   help="quantile of the good images' scores and map maxima used as thresholds (1.0: their maximum)")
    p.add_argument("--on_error", choices=ON_ERROR, default="skip",
                   help="an unreadable image: skip it with an error row (exit status 3 at the end) or stop (exit 2)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous run's outputs in --save_path (without it such a folder is refused)")
    p.add_argument("--figure_scale", choices=FIGURE_SCALES, default="run",
                   help="heatmap colours: one scale for the whole run, or one per image; either is widened to "
                        "put the pixel threshold in the middle when there is one")
    p.add_argument("--reference", default=None,
                   help="few-shot: good images of the part (folder, glob or file), or a bank saved with "
                        "--save_reference (.safetensors); their nearest-neighbour map is added to the zero-shot one")
    p.add_argument("--save_reference", type=path_arg, default=None,
                   help="save the bank built from --reference images to this .safetensors file")
    add_grid_arguments(p, None)
    add_model_arguments(p, from_checkpoint=True)
    return p


def export_parser() -> argparse.ArgumentParser:
    p = _parser("Export a trained detector to one ONNX file, for onnxruntime, OpenVINO or TensorRT. Model "
                "settings default to those the checkpoint was trained with; --precision fp16 exports a "
                "half-precision vision tower for GPUs.")
    p.add_argument("--checkpoint_path", type=path_arg, required=True, help="prompt checkpoint file or folder")
    p.add_argument("--output", type=path_arg, required=True, help="the .onnx file to write")
    p.add_argument("--format", choices=("onnx",), default="onnx")
    p.add_argument("--threshold_file", type=path_arg, default=None,
                   help="a threshold.json from calibration, stored in the file's metadata")
    p.add_argument("--reference", default=None,
                   help="few-shot: good images or a saved bank (.safetensors) to bake into the graph")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (18 or newer)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    add_grid_arguments(p, "fixed")
    add_model_arguments(p, from_checkpoint=True)
    return p


def app_parser() -> argparse.ArgumentParser:
    p = _parser("The inspection page: a local web page where images dropped in get their anomaly maps, scores "
                "and decisions, with sliders for the thresholds. Model settings default to those the checkpoint "
                "was trained with; images run as with predict.py.")
    p.add_argument("--checkpoint_path", type=path_arg, required=True, help="prompt checkpoint file or folder")
    p.add_argument("--threshold_file", type=path_arg, default=None,
                   help="a threshold.json (calibration or the page's own) that the sliders start at")
    p.add_argument("--reference", default=None,
                   help="few-shot: good images of the part (folder, glob or file), or a saved bank (.safetensors)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; the page has no login, so widen it only on a network you trust")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (0: any free one)")
    p.add_argument("--max_upload_mb", type=float, default=50, help="largest image file the page takes, in MB")
    p.add_argument("--max_megapixels", type=float, default=40,
                   help="largest image the page takes, in megapixels, checked before it is decoded")
    add_grid_arguments(p, "auto")
    add_model_arguments(p, from_checkpoint=True)
    workers = next(action for action in p._actions if action.dest == "num_workers")
    workers.default = 0
    workers.help = ("DataLoader worker processes, or auto (default: 0 here: processes forked from the server's "
                    "threads can hang)")
    return p


def demo_parser() -> argparse.ArgumentParser:
    p = _parser("Run the complete DHR-CLIP protocol on synthetic data: train on some classes, test zero-shot "
                "on others.")
    p.add_argument("--save_path", type=path_arg, default=Path("./demo_output"))
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--pretrained", default="openai", help="tag or weights file; 'none' forces the tiny random CLIP")
    p.add_argument("--epoch", type=int, default=None, help="training epochs (default 8 tiny, 3 real)")
    p.add_argument("--device", default="auto")
    p.add_argument("--num_workers", type=workers_arg, default="auto")
    p.add_argument("--debug", action="store_true")
    return p


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The model flags given on the command line (None = not given)."""
    return {name: getattr(args, name) for name in MODEL_FLAGS}


def _data_path(args: argparse.Namespace, given: Path | None) -> Path:
    return given or Path(f"./data/{args.dataset or 'mvtec'}")


def _print_config(resolved: ResolvedConfig) -> None:
    print(resolved.describe())


def _join_processes(device: str) -> str:
    """Under torchrun, join the other processes and return this one's device."""
    from ..engine.distributed import start

    return start(device)


def _train(args: argparse.Namespace) -> None:
    from ..detector.checkpoint import latest_checkpoint, read_checkpoint
    from ..engine.training import train

    config = TrainConfig(
        data_path=_data_path(args, args.train_data_path), save_path=args.save_path, dataset=args.dataset,
        epochs=args.epoch, learning_rate=args.learning_rate, batch_size=args.batch_size,
        print_freq=args.print_freq, save_freq=args.save_freq, image_loss_weight=args.image_loss_weight,
        feature_cache=args.feature_cache, resume=args.resume, seed=args.seed, num_workers=args.num_workers,
        grid=args.grid, max_tiles=args.max_tiles,
        bit_depth=args.bit_depth, device=_join_processes(args.device), precision=args.precision)
    last = latest_checkpoint(args.resume) if args.resume is not None else None
    saved = read_checkpoint(last).config if last is not None else None
    resolved = resolve_model_config(model_overrides(args), saved=saved, resume=saved is not None)
    if args.print_config:
        _print_config(resolved)
        return
    train(config, resolved.config)


def _load_detector(args: argparse.Namespace):
    from ..detector.facade import DHRCLIP

    overrides = {k: v for k, v in model_overrides(args).items() if k != "pretrained"}
    if args.print_config:
        _print_config(DHRCLIP.resolve_config(args.checkpoint_path, args.pretrained, **overrides))
        return None
    return DHRCLIP.from_checkpoint(args.checkpoint_path, pretrained=args.pretrained,
                                   device=_join_processes(args.device), precision=args.precision, **overrides)


def _test(args: argparse.Namespace) -> None:
    from ..data.canvases import read_meta
    from ..engine.evaluation import evaluate

    config = EvalConfig(
        data_path=_data_path(args, args.data_path), save_path=args.save_path, dataset=args.dataset,
        classes=args.classes, metrics=args.metrics, map_norm=args.map_norm, aupro=args.aupro, vis=args.vis,
        batch_size=args.batch_size, num_workers=args.num_workers, bit_depth=args.bit_depth, seed=args.seed,
        grid=args.grid, max_tiles=args.max_tiles, k_shot=args.k_shot, k_shot_runs=args.k_shot_runs)
    if not args.print_config:
        read_meta(config.data_path, "test", config.classes)  # a wrong dataset fails before the model loads
    model = _load_detector(args)
    if model is not None:
        evaluate(model, config)


def _suite(args: argparse.Namespace) -> None:
    from ..engine.suite import run_suite

    settings = EvalConfig(data_path=args.data_path, save_path=args.save_path, metrics=args.metrics,
                          batch_size=args.batch_size, num_workers=args.num_workers, bit_depth=args.bit_depth,
                          seed=args.seed, grid=args.grid, max_tiles=args.max_tiles, k_shot=args.k_shot,
                          k_shot_runs=args.k_shot_runs)
    if not args.print_config and not args.data_path.is_dir():  # before the model loads
        raise UserError(f"data root not found: {args.data_path}", field="data_path")
    model = _load_detector(args)
    if model is not None:
        report = run_suite(model, args.data_path, settings, args.datasets, args.reindex)
        if report["failed"]:
            sys.exit(1)


def _predict(args: argparse.Namespace) -> None:
    from ..engine.prediction import check_save_path, collect_images, predict

    if (args.onnx is None) == (args.checkpoint_path is None):
        raise UserError("give either checkpoint_path (the PyTorch model) or onnx (an exported file)",
                        field="checkpoint_path")
    if args.onnx is not None:
        _check_onnx_flags(args)
    args.grid = args.grid or ("fixed" if args.onnx is not None else "auto")

    config = PredictConfig(
        input=args.input, save_path=args.save_path, threshold=args.threshold, pixel_threshold=args.pixel_threshold,
        threshold_file=args.threshold_file, calibrate_on=args.calibrate_on,
        calibrate_quantile=args.calibrate_quantile, on_error=args.on_error, overwrite=args.overwrite,
        figure_scale=args.figure_scale, batch_size=args.batch_size, num_workers=args.num_workers,
        bit_depth=args.bit_depth, seed=args.seed, grid=args.grid, max_tiles=args.max_tiles, reference=args.reference,
        save_reference=args.save_reference)
    if not args.print_config:  # a wrong input or output folder fails before the model loads
        collect_images(config.input, exclude=config.save_path)
        check_save_path(config)
    if args.onnx is not None:
        from ..deploy.runtime import OnnxDetector

        _join_processes("cpu")  # under torchrun the inputs are shared out (gloo), whichever device runs the graph
        model = OnnxDetector(args.onnx, _onnx_providers(args.device))
    else:
        model = _load_detector(args)
    if model is not None and any(row["error"] for row in predict(model, config)):
        sys.exit(EXIT_SKIPPED)


def _onnx_providers(device: str) -> list[str]:
    """onnxruntime's execution providers for --device: CUDA's (with the CPU for what it lacks) or the CPU's."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if device.startswith("cuda") or (device == "auto" and "CUDAExecutionProvider" in available):
        if "CUDAExecutionProvider" not in available:
            raise UserError(f"device {device}: this onnxruntime has no CUDA provider (install onnxruntime-gpu)",
                            field="device")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device not in ("auto", "cpu"):
        raise UserError(f"device {device} is not one onnxruntime runs on here; use cpu or cuda", field="device")
    return ["CPUExecutionProvider"]


def _check_onnx_flags(args: argparse.Namespace) -> None:
    """What an exported file fixes cannot be asked of it."""
    given = [name for name, value in model_overrides(args).items() if value is not None]
    if given:
        raise UserError(f"{given[0]} is fixed inside the exported file; export again to change it", field=given[0])
    if args.grid == "auto":
        raise UserError("grid auto needs the PyTorch model: an exported file holds the fixed canvas", field="grid")
    if args.reference is not None:
        raise UserError("reference banks are baked into the file at export (export.py --reference)",
                        field="reference")
    if args.print_config:
        raise UserError("print_config reads a checkpoint; an exported file's settings are in its metadata",
                        field="print_config")
    if args.precision is not None:
        raise UserError("precision is fixed inside the exported file (export.py --precision)", field="precision")


def _export(args: argparse.Namespace) -> None:
    from ..detector.facade import DHRCLIP
    from ..deploy.export import export_onnx
    from ..engine.prediction import read_threshold_file

    overrides = {k: v for k, v in model_overrides(args).items() if k != "pretrained"}
    if args.print_config:
        _print_config(DHRCLIP.resolve_config(args.checkpoint_path, args.pretrained, **overrides))
        return
    if args.output.exists() and not args.overwrite:
        raise UserError(f"output {args.output} exists; choose another file or add --overwrite to replace it",
                        field="output")
    # traced in fp32; --precision fp16 converts the vision tower of the traced copy
    model = DHRCLIP.from_checkpoint(args.checkpoint_path, pretrained=args.pretrained, device=args.device,
                                    precision="fp32", **overrides)
    if args.reference is not None:
        model = _with_reference(model, args)
    thresholds = None
    if args.threshold_file is not None:
        saved, (image_t, pixel_t) = read_threshold_file(args.threshold_file, model, args.grid, args.max_tiles)
        if "config" not in saved:
            raise UserError(f"{args.threshold_file} records no settings, so it cannot be checked against this "
                            f"export; recalibrate with predict.py --grid fixed", field="threshold_file")
        thresholds = {"image_threshold": image_t, "pixel_threshold": pixel_t}
    path = export_onnx(model, args.output, thresholds, args.precision or "fp32", args.grid, args.opset)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); run it with predict.py --onnx {path} --input ...")


def _with_reference(model: DHRCLIP, args: argparse.Namespace) -> DHRCLIP:
    """``model`` with the few-shot bank of --reference: a saved bank, or good images to build one from."""
    from ..config import is_bank_file
    from ..engine.prediction import collect_images

    reference = args.reference if is_bank_file(args.reference) else collect_images(args.reference)[0]
    return model.with_reference(reference, args.grid, args.max_tiles, args.batch_size)


def _app(args: argparse.Namespace) -> None:
    from ..page.inspector import AppSettings, Limits

    try:
        from ..page.server import serve
    except ModuleNotFoundError as exc:
        raise UserError(f"the inspection page needs {exc.name}: pip install 'dhrclip[app]' "
                        f"(or -e '.[app]' in a checkout)") from exc
    from ..engine.distributed import launched_size
    from ..engine.prediction import read_threshold_file
    from ..core.runtime import seed_everything

    if launched_size() > 1:
        raise UserError("the inspection page runs in one process; start it without torchrun")
    if args.max_upload_mb <= 0 or args.max_megapixels <= 0:
        raise UserError("max_upload_mb and max_megapixels must be positive", field="max_upload_mb")
    model = _load_detector(args)
    if model is None:
        return
    seed_everything(args.seed)
    if args.reference is not None:
        model = _with_reference(model, args)
    image_t = pixel_t = None
    if args.threshold_file is not None:
        _, (image_t, pixel_t) = read_threshold_file(args.threshold_file, model, args.grid, args.max_tiles)
    settings = AppSettings(grid=args.grid, max_tiles=args.max_tiles, batch_size=args.batch_size,
                           num_workers=args.num_workers, bit_depth=args.bit_depth, image_threshold=image_t,
                           pixel_threshold=pixel_t,
                           limits=Limits(max_file_bytes=int(args.max_upload_mb * 2**20),
                                         max_pixels=int(args.max_megapixels * 1e6)))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: the page has no login, so anyone who reaches it can upload images", args.host)
    serve(model, settings, args.host, args.port,
          ready=lambda url: print(f"the inspection page is at {url} (Ctrl+C to stop)", flush=True))


def _demo(args: argparse.Namespace) -> None:
    from ..engine.demo import run_demo

    results = run_demo(args.save_path, model=args.model, pretrained=args.pretrained, epochs=args.epoch,
                       device=args.device, num_workers=args.num_workers)
    checkpoint = results["trained"]["checkpoint"]
    print(f"Your own images with these prompts (the checkpoint brings back its settings):\n"
          f"  {shlex.quote(sys.executable)} predict.py --checkpoint_path {shlex.quote(checkpoint)} "
          f"--input YOUR_IMAGES/ --save_path predictions/")


def run(main: Callable[[argparse.Namespace], object], parser: argparse.ArgumentParser,
        argv: list[str] | None = None) -> None:
    """Parse flags and run ``main``; user mistakes end as one line on stderr with status 2."""
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    rank, processes = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    level = logging.DEBUG if debug else logging.INFO if rank == 0 else logging.WARNING  # torchrun: rank 0 reports
    logging.basicConfig(level=level, datefmt="%H:%M:%S",
                        format=f"%(asctime)s {f'[rank {rank}] ' if processes > 1 else ''}%(levelname)s %(message)s")
    try:
        main(args)
    except UserError as exc:
        if debug:
            raise
        _fail(one_line(exc, {action.dest for action in parser._actions}))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if debug or type(exc).__name__ != "OutOfMemoryError":
            raise
        _fail(f"CUDA ran out of memory at --batch_size {getattr(args, 'batch_size', '?')}; "
              f"try a smaller --batch_size")
    finally:
        if "torch.distributed" in sys.modules:
            from ..engine.distributed import stop
            stop()


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def one_line(exc: UserError, flags: set[str] | None = None) -> str:
    """The user's message on one line, also when a DataLoader worker wrapped it in its
    traceback, with the settings it names shown as flags: the field at fault, and any
    other setting whose name has an underscore (such names never occur in prose)."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(f"{UserError.__name__}: ", 1)[-1]
    names = {getattr(exc, "field", None)} | {name for name in flags or () if "_" in name}
    for name in sorted(filter(None, names), key=len, reverse=True):
        flag = next((f for f in (name, *FLAG_ALIASES.get(name, ())) if flags is None or f in flags), None)
        if flag:
            text = re.sub(rf"(?<![-\w/.]){re.escape(name)}(?![\w/.])", f"--{flag}", text)
    return text


def train_main(argv: list[str] | None = None) -> None:
    run(_train, train_parser(), argv)


def test_main(argv: list[str] | None = None) -> None:
    run(_test, evaluation_parser(), argv)


def predict_main(argv: list[str] | None = None) -> None:
    run(_predict, prediction_parser(), argv)


def export_main(argv: list[str] | None = None) -> None:
    run(_export, export_parser(), argv)


def app_main(argv: list[str] | None = None) -> None:
    run(_app, app_parser(), argv)


def suite_main(argv: list[str] | None = None) -> None:
    run(_suite, suite_parser(), argv)


def demo_main(argv: list[str] | None = None) -> None:
    run(_demo, demo_parser(), argv)

