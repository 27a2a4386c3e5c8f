"""Export a detector to one self-contained ONNX file (README "Deploying").

Once the prompts are trained, a detector is a fixed function of the canvas: the text features, the
optional few-shot bank and the thresholds are constants. The graph takes a uint8 (B, 3, T, T)
canvas batch (the batch axis is dynamic) and computes everything test.py does on it: normalisation,
the global view and the tiles, the V-V path, the maps, stitching, smoothing and the image score.
Settings, thresholds and the project's version go into the file's metadata, which ``deploy`` reads.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..detector.facade import DHRCLIP
from ..errors import UserError

log = logging.getLogger(__name__)

OPSET = 18  # the first opset whose Resize has the antialiasing the global view needs
EXPORT_PRECISIONS = ("fp32", "fp16")
META_PREFIX = "dhrclip."


class _Canvas2Maps(nn.Module):
    """The detector as a function of the canvas alone, the text features baked in."""

    def __init__(self, model: DHRCLIP) -> None:
        super().__init__()
        self.net = model.model
        self.register_buffer("text", model.model.text_features().detach())

    def forward(self, canvas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, scores = self.net(canvas, self.text)
        return maps.float(), scores.float()


def metadata(model: DHRCLIP, thresholds: dict | None, precision: str) -> dict[str, str]:
    """What the runtime needs to know besides the graph, as the file's metadata properties."""
    reference = model.reference
    fields = {
        "version": __version__,
        "config": json.dumps(model.config.to_dict()),
        "canvas": str(model.config.target_image_size),
        "precision": precision,
        "checkpoint": str(Path(model.checkpoint).resolve()) if model.checkpoint else "",
        "checkpoint_fingerprint": model.checkpoint_fingerprint or "",
        "thresholds": json.dumps(thresholds),
        "reference": json.dumps({"digest": reference.digest(), "images": reference.sources} if reference else None),
    }
    return {META_PREFIX + key: value for key, value in fields.items()}


def export_onnx(model: DHRCLIP, output: Path, thresholds: dict | None = None, precision: str = "fp32",
                grid: str = "fixed", opset: int = OPSET) -> Path:
    """Write ``model`` (with its few-shot bank, if any) to ``output`` as one ONNX file.

    ``thresholds``: {"image_threshold", "pixel_threshold"} to store with it. ``precision`` "fp16"
    runs the vision tower in half precision (for GPUs; maps and scores stay float32). The grid
    must be "fixed": with "auto" the canvas shape changes per image.
    """
    if grid != "fixed":
        raise UserError("grid auto gives every image its own canvas shape, which one ONNX graph cannot take; "
                        "export with grid fixed (predict.py --onnx then uses the fixed canvas)", field="grid")
    if opset < OPSET:
        raise UserError(f"opset {opset} has no antialiased Resize, which the global view needs; use {OPSET} or "
                        f"newer", field="opset")
    if precision not in EXPORT_PRECISIONS:
        raise UserError(f"precision {precision} cannot be exported; use fp32 or fp16", field="precision")
    if model.reference is not None and model.reference.grid != "fixed":
        raise UserError("the reference bank was built with grid auto; rebuild it with grid fixed to export it",
                        field="reference")
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
    log.info("exporting to %s (opset %d, %s)", output, opset, precision)
    with torch.no_grad():
        module(example)  # fills the per-size caches (positional tables) before tracing
        torch.onnx.export(module, (example,), str(output), dynamo=True, opset_version=opset, optimize=False,
                          external_data=False, verbose=False, input_names=["canvas"],
                          output_names=["anomaly_map", "image_score"],
                          dynamic_shapes={"canvas": {0: torch.export.Dim.DYNAMIC}})
    graph = onnx.load(str(output))
    for key, value in metadata(model, thresholds, precision).items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(output))
    return output
