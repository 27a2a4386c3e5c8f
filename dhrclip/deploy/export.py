"""Export a detector to one self-contained ONNX file (README "Deploying").

Once the prompts are trained, a detector is a fixed function of the canvas: the text features, the
optional few-shot bank and the thresholds are constants. The graph takes a batch of uint8 canvases
(the batch axis is dynamic) and computes everything test.py does on them: normalisation, the global
view and the tiles, the V-V path, the maps, stitching, smoothing and the image score.

- Fixed grid: the input is the (B, 3, T, T) ``canvas``.
- Auto grid: the canvas's height and width are dynamic too (whole tiles, rows·P × cols·P), with
  two more inputs: each image's ``box`` on it (B, 4: top, left, height, width) and ``global_grid``,
  a (rows, cols) array whose shape alone tells the graph the global view's token grid (its
  values are not read). The runtime places each image as ``predict.py --grid auto`` does.

Settings, the grid, thresholds and the project's version go into the file's metadata
(``deploy.metadata``).
"""
from __future__ import annotations

import copy
import logging
import os
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..config import RunOptions
from ..core.grid import Grid, TileGrid, global_view_size
from ..core.tiling import Layout
from ..detector.bank import check_bank
from ..detector.facade import DHRCLIP
from ..detector.results import NO_THRESHOLDS, Thresholds
from ..errors import UserError
from ..files import TEMPORARY_SUFFIX, atomic_write, remove_temporaries
from .metadata import EXPORT_PRECISIONS, OnnxMetadata
from .sessions import OrtSession

log = logging.getLogger(__name__)

# the oldest opset the exporter writes this graph in: asked for 17, its version converter fails on
# the reductions' axes (inputs since opset 18) and it writes opset 18 regardless
OPSET = 18
EXPORT_RUN = RunOptions()  # the fixed grid


class _Detector(nn.Module):
    """The detector as a function of its canvases, the text features baked in."""

    text: torch.Tensor

    def __init__(self, model: DHRCLIP) -> None:
        super().__init__()
        self.net = model.model
        self.register_buffer("text", model.model.text_features().detach())

    def forward(self, canvas: torch.Tensor, box: torch.Tensor | None = None,
                global_grid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if box is None or global_grid is None:  # one canvas for every image
            layout = self.net.layout(None, canvas.device)
        else:
            height, width = canvas.shape[-2:]
            tile, patch = self.net.config.patch_image_size, self.net.vision.patch_size
            tiles = TileGrid(height, width, tile, height // tile, width // tile)
            layout = Layout(tiles, (global_grid.shape[0] * patch, global_grid.shape[1] * patch), box)
        maps, scores = self.net.detect(canvas, layout, self.text)
        return maps.float(), scores.float()


def _example(model: DHRCLIP, grid: Grid) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Inputs to trace with, and their dynamic axes: the batch, and on the auto grid the canvas's
    rows and columns of tiles and the global view's token grid. The example has two images, and
    two rows and three columns of tiles, whatever ``max_tiles`` allows: a size of 1, or two equal
    sizes, would be taken for a constant by the tracer."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    if grid.uniform:
        size = grid.place(1, 1).tiles.size
        return {"canvas": torch.zeros(2, 3, *size, dtype=torch.uint8, device=model.device)}, {"canvas": {0: batch}}
    tile, patch = model.config.patch_image_size, model.model.vision.patch_size
    height, width = 2 * tile, 3 * tile
    canvas = torch.zeros(2, 3, height, width, dtype=torch.uint8, device=model.device)
    box = torch.tensor([[5, 0, height - 10, width], [0, 7, height, width - 14]], device=model.device)
    g_height, g_width = global_view_size(height, width, model.config.image_size, patch)
    most = max(3, grid.record()["max_tiles"])
    rows, cols = torch.export.Dim("rows", min=1, max=most), torch.export.Dim("cols", min=1, max=most)
    return ({"canvas": canvas, "box": box, "global_grid": torch.zeros(g_height // patch, g_width // patch)},
            {"canvas": {0: batch, 2: tile * rows, 3: tile * cols}, "box": {0: batch},
             "global_grid": {0: torch.export.Dim("global_rows", min=1, max=4096),
                             1: torch.export.Dim("global_cols", min=1, max=4096)}})


def _vision_shapes(model: DHRCLIP) -> set[tuple[int, ...]]:
    """The shapes of the vision tower's matrix weights (either way round): attention in and out,
    MLP in and out, and the projection to the embedding."""
    width = model.model.vision.width
    embedding = model.model.token_width
    shapes = {(width, 3 * width), (width, width), (width, 4 * width), (width, embedding)}
    return shapes | {(b, a) for a, b in shapes}


def quantize_vision(source: Path, target: Path, model: DHRCLIP) -> None:
    """Write ``source`` to ``target`` with the vision tower's matrix products quantised to 8 bits
    (onnxruntime's dynamic quantisation: int8 weights per output channel, activations quantised
    per batch as the graph runs). Only the tower's are: the text and few-shot products compare
    normalised features whose small differences a temperature of 0.07 would magnify."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load(str(source))
    _fold_weight_transposes(proto.graph)
    onnx.save(proto, str(target))
    weights = {init.name: tuple(init.dims) for init in proto.graph.initializer}
    wanted = _vision_shapes(model)
    nodes = [node.name for node in proto.graph.node if node.op_type in ("MatMul", "Gemm")
             and any(weights.get(name) in wanted for name in node.input)]
    log.info("quantising %d matrix products of the vision tower to int8", len(nodes))
    logging.disable(logging.WARNING)  # the quantiser logs a line per tensor, and advice, on the root logger
    try:
        quantize_dynamic(str(target), str(target), nodes_to_quantize=nodes, weight_type=QuantType.QInt8,
                         per_channel=True)
    finally:
        logging.disable(logging.NOTSET)


def _fold_weight_transposes(graph: Any) -> None:
    """Replace each transpose of a weight (``F.linear`` exports ``x @ Wᵀ``) by the transposed
    weight, so the quantiser finds the weights of the matrix products it quantises."""
    from onnx import numpy_helper

    weights = {init.name: init for init in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    for node in list(graph.node):
        source = node.input[0] if node.op_type == "Transpose" else None
        if source is None or source not in weights or readers[source] != 1:
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        array = numpy_helper.to_array(weights[source])
        folded = numpy_helper.from_array(np.ascontiguousarray(np.transpose(array, perm)), node.output[0])
        graph.initializer.remove(weights[source])
        graph.initializer.append(folded)
        graph.node.remove(node)


def report_agreement(reference: Path, quantized: Path, inputs: dict[str, np.ndarray]) -> dict[str, float]:
    """How far the quantised graph's maps and scores are from the float32 graph's on random
    canvases (logged; a warning when the maps differ by more than 5% of their range, where the
    float32 file is the better choice). Returns the differences."""
    rng = np.random.default_rng(0)
    feed = {**inputs, "canvas": rng.integers(0, 256, inputs["canvas"].shape, dtype=np.uint8)}
    (maps, scores), (q_maps, q_scores) = (OrtSession(path).run(feed) for path in (reference, quantized))
    span = float(maps.max() - maps.min()) or 1.0
    found = {"map_max_abs": float(np.abs(q_maps - maps).max()), "map_mean_abs": float(np.abs(q_maps - maps).mean()),
             "score_max_abs": float(np.abs(q_scores - scores).max()), "map_range": span}
    log.info("int8 against fp32 on random canvases: maps differ by %.4f at most (mean %.4f) on a range of %.4f; "
             "scores by %.4f", found["map_max_abs"], found["map_mean_abs"], span, found["score_max_abs"])
    if found["map_mean_abs"] > 0.05 * span:
        log.warning("the int8 maps differ from fp32 by %.1f%% of their range on average; the fp32 export is the "
                    "safer choice for this model", 100 * found["map_mean_abs"] / span)
    return found


def export_onnx(model: DHRCLIP, output: str | os.PathLike, thresholds: Thresholds = NO_THRESHOLDS,
                precision: str = "fp32", run: RunOptions = EXPORT_RUN, opset: int = OPSET) -> Path:
    """Write ``model`` (with its few-shot bank, if any) for ``run``'s grid to ``output`` as one ONNX
    file, atomically: an interrupted export leaves any earlier file in place.

    ``thresholds``: to store with it. ``precision`` "fp16" runs the vision tower in half
    precision (for GPUs); "int8" quantises the vision tower's matrix products to 8 bits (for
    CPUs; ``quantize_vision``). Maps and scores stay float32.
    """
    grid = model.grid_for(run)
    if opset < OPSET:
        raise UserError(f"opset {opset} cannot be written: the exporter converts this graph no further back "
                        f"than opset {OPSET}; use {OPSET} or newer", field="opset")
    if precision not in EXPORT_PRECISIONS:
        raise UserError(f"precision {precision} cannot be exported; use {', '.join(EXPORT_PRECISIONS)}",
                        field="precision")
    if model.reference is not None:
        check_bank(model.reference, model.config, model.model.token_width, grid, "bank")
    try:
        import onnx
    except ImportError as exc:
        raise UserError("exporting needs the deploy extra: pip install '.[deploy]' (onnx, onnxscript, "
                        "onnxruntime)") from exc
    module = _Detector(model).eval()
    if precision == "fp16":
        module = copy.deepcopy(module)
        module.net.clip.visual.half()  # the heavy part; the maps and the scores are computed in float32
    inputs, dynamic = _example(model, grid)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    signature = model.signature(run)
    checkpoint = str(Path(model.checkpoint).resolve()) if model.checkpoint else None
    meta = OnnxMetadata(__version__, replace(signature, checkpoint=checkpoint), model.config.target_image_size,
                        precision, thresholds, model.reference_sources, model.model.vision.patch_size,
                        model.model.vision.width)
    log.info("exporting %s to %s (opset %d, %s)", grid.describe(), output, opset, precision)
    remove_temporaries(output.parent, output.name)  # of an export into this file that was killed
    temporary: list[Path] = []

    def scratch(kind: str) -> Path:
        handle, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=f".{kind}{TEMPORARY_SUFFIX}",
                                        dir=output.parent)
        os.close(handle)
        temporary.append(Path(name))
        return temporary[-1]

    try:
        traced = scratch("trace")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*shares the same shape constraints.*")  # box and canvas
            module(**inputs)  # one eager call, so that what is computed on first use is not traced
            torch.onnx.export(module, (), str(traced), kwargs=inputs, dynamo=True, opset_version=opset, optimize=True,
                              external_data=False, verbose=False, input_names=list(inputs),
                              output_names=["anomaly_map", "image_score"], dynamic_shapes=dynamic)
        if precision == "int8":
            quantized = scratch("int8")
            quantize_vision(traced, quantized, model)
            report_agreement(traced, quantized, {k: v.cpu().numpy() for k, v in inputs.items()})
            traced = quantized
        graph = onnx.load(str(traced))
        for key, value in meta.to_properties().items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        data = graph.SerializeToString()
        atomic_write(output, lambda f: f.write(data))
    finally:
        for path in temporary:
            path.unlink(missing_ok=True)
    return output
