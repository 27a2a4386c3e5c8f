"""Export a detector to one self-contained ONNX file (README "Deploying").

Once the prompts are trained, a detector is a fixed function of the canvas: the text features, the
optional few-shot bank and the thresholds are constants. The graph takes a uint8 (B, 3, T, T)
canvas batch (the batch axis is dynamic) and computes everything test.py does on it: normalisation,
the global view and the tiles, the V-V path, the maps, stitching, smoothing and the image score.
Settings, thresholds and the project's version go into the file's metadata (``deploy.metadata``).
"""
from __future__ import annotations

import copy
import logging
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..config import RunOptions
from ..detector.bank import check_bank
from ..detector.facade import DHRCLIP
from ..detector.results import NO_THRESHOLDS, Thresholds
from ..errors import UserError
from ..files import TEMPORARY_SUFFIX, atomic_write, remove_temporaries
from .metadata import EXPORT_PRECISIONS, OnnxMetadata

log = logging.getLogger(__name__)

OPSET = 18  # the first opset whose Resize has the antialiasing the global view needs
EXPORT_RUN = RunOptions()  # the fixed grid


class _Canvas2Maps(nn.Module):
    """The detector as a function of the canvas alone, the text features baked in."""

    def __init__(self, model: DHRCLIP) -> None:
        super().__init__()
        self.net = model.model
        self.register_buffer("text", model.model.text_features().detach())

    def forward(self, canvas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, scores = self.net(canvas, None, self.text)
        return maps.float(), scores.float()


def export_onnx(model: DHRCLIP, output: Path, thresholds: Thresholds = NO_THRESHOLDS, precision: str = "fp32",
                run: RunOptions = EXPORT_RUN, opset: int = OPSET) -> Path:
    """Write ``model`` (with its few-shot bank, if any) to ``output`` as one ONNX file, atomically:
    an interrupted export leaves any earlier file in place.

    ``thresholds``: to store with it. ``precision`` "fp16" runs the vision tower in half
    precision (for GPUs; maps and scores stay float32). ``run``'s grid must give every image one
    canvas (the fixed grid): a graph here takes one canvas shape.
    """
    grid = model.grid_for(run)
    if not grid.uniform:
        raise UserError(f"{grid.describe()} gives every image its own canvas shape, which an export cannot take; "
                        f"export with grid fixed (predict.py --onnx then uses the fixed canvas)", field="grid")
    if opset < OPSET:
        raise UserError(f"opset {opset} has no antialiased Resize, which the global view needs; use {OPSET} or "
                        f"newer", field="opset")
    if precision not in EXPORT_PRECISIONS:
        raise UserError(f"precision {precision} cannot be exported; use fp32 or fp16", field="precision")
    if model.reference is not None:
        check_bank(model.reference, model.config, model.model.token_width, grid, "bank")
    try:
        import onnx
    except ImportError as exc:
        raise UserError("exporting needs the deploy extra: pip install '.[deploy]' (onnx, onnxscript, "
                        "onnxruntime)") from exc
    module = _Canvas2Maps(model).eval()
    if precision == "fp16":
        module = copy.deepcopy(module)
        module.net.clip.visual.half()  # the heavy part; the maps and the scores are computed in float32
    size = model.config.target_image_size
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8, device=model.device)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    signature = model.signature(run)
    checkpoint = str(Path(model.checkpoint).resolve()) if model.checkpoint else None
    meta = OnnxMetadata(__version__, replace(signature, checkpoint=checkpoint), size, precision, thresholds,
                        model.reference_sources)
    log.info("exporting to %s (opset %d, %s)", output, opset, precision)
    remove_temporaries(output.parent, output.name)  # of an export into this file that was killed
    handle, traced = tempfile.mkstemp(prefix=f".{output.name}.", suffix=f".trace{TEMPORARY_SUFFIX}", dir=output.parent)
    os.close(handle)
    try:
        with torch.no_grad():
            module(example)  # fills the per-size caches (positional tables) before tracing
            torch.onnx.export(module, (example,), traced, dynamo=True, opset_version=opset, optimize=False,
                              external_data=False, verbose=False, input_names=["canvas"],
                              output_names=["anomaly_map", "image_score"],
                              dynamic_shapes={"canvas": {0: torch.export.Dim.DYNAMIC}})
        graph = onnx.load(traced)
        for key, value in meta.to_properties().items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        data = graph.SerializeToString()
        atomic_write(output, lambda f: f.write(data))
    finally:
        Path(traced).unlink(missing_ok=True)
    return output
