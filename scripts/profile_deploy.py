"""Where an exported detector spends its time in onnxruntime on the CPU, and what the runtime's
batch splitting and fused attention would change. The figures behind docs/benchmarks.md's notes
on onnxruntime against PyTorch eager.

Three measurements, on the benchmark models of ``bench_deploy.py`` (auto grid, S = P = 224,
T = 448) or on a file given with ``--onnx``, with canvases for a 448×400 image:

- ``--profile``: onnxruntime's profiler over a few calls at ``--batch``; kernel time by operator,
  and how much of it is inside the vision tower (a node is counted there when one of its outputs
  has the tower's token count as a dimension) and how much is shape arithmetic (nodes that read
  only shapes and constants, never the canvas or the box);
- ``--calls``: a batch of 8 canvases run in calls of each given size, interleaved rounds;
- ``--attention``: one attention over ``--views`` views (heads of 64, the tiny CLIP's 257 tokens)
  as separate MatMul/Softmax nodes, as ONNX's Attention node (opset 23), as onnxruntime's
  MultiHeadAttention, and as PyTorch's scaled_dot_product_attention.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_deploy import MODELS, build

from dhrclip.config import RunOptions
from dhrclip.deploy.export import export_onnx
from dhrclip.deploy.runtime import OnnxDetector
from dhrclip.deploy.sessions import Session


def median_speed(functions: dict[str, Callable[[], int]], rounds: int) -> dict[str, float]:
    """Images/s of each function (which returns how many images it ran), the median of ``rounds``
    timings taken in a fresh random order each round, each after a warm-up call."""
    found: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        order = list(functions)
        random.shuffle(order)
        for name in order:
            functions[name]()
            began = time.perf_counter()
            images = functions[name]()
            found[name].append(images / (time.perf_counter() - began))
    return {name: round(float(np.median(speeds)), 3) for name, speeds in found.items()}


class Profiled:
    """A ``Session`` over a profiling onnxruntime session, in one call per batch."""

    def __init__(self, session: onnxruntime.InferenceSession, like: Session) -> None:
        self.inputs, self.metadata, self.name = like.inputs, like.metadata, "onnxruntime (profiled)"
        self.splits_batches = False
        self._session = session

    def run(self, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self._session.run(None, feed)
        return maps, scores


def profile(path: Path, batch: int, calls: int = 3) -> dict:
    """onnxruntime's kernel time by operator over ``calls`` calls (after one not counted)."""
    detector = OnnxDetector(path)
    placed = detector.grid.place(448, 400)
    canvases = np.random.default_rng(0).integers(0, 256, (batch, 3, *placed.tiles.size), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as work:
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(work) / "optimised.onnx")
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(work) / "profile")
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        detector.session = Profiled(session, detector.session)  # the runtime's own feed, profiled
        for _ in range(calls + 1):
            detector.run(canvases, [placed] * batch)
        events = json.loads(Path(session.end_profiling()).read_text())
        graph = onnx.load(str(Path(work) / "optimised.onnx")).graph
    data = {"canvas", "box"}  # global_grid carries only its shape
    for node in graph.node:
        if node.op_type != "Shape" and any(name in data for name in node.input):
            data.update(node.output)
    shape_only = {node.name for node in graph.node if not any(name in data for name in node.output)}
    tokens = str((placed.tiles.tile // detector.metadata.patch) ** 2 + 1)
    seen: collections.Counter = collections.Counter()
    by_op: collections.Counter = collections.Counter()
    parts: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        name = event["name"][:-len("_kernel_time")]
        seen[name] += 1
        if seen[name] == 1:
            continue  # the first call
        microseconds = event["dur"] / calls
        by_op[event["args"]["op_name"]] += microseconds
        shapes = event["args"].get("output_type_shape", [])
        inside = any(tokens in [str(d) for d in shape] for output in shapes for shape in output.values())
        parts["shape arithmetic" if name in shape_only else "vision tower" if inside else "rest"] += microseconds
    total = sum(by_op.values())
    return {"batch": batch, "nodes": len(graph.node), "kernel_ms_per_call": round(total / 1000, 2),
            "share": {k: round(v / total, 3) for k, v in parts.items()},
            "top_ops_ms": {k: round(v / 1000, 2) for k, v in by_op.most_common(12)}}


def calls(path: Path, sizes: list[int], rounds: int) -> dict[str, float]:
    """Images/s of a batch of 8 canvases run in calls of each size."""
    detector = OnnxDetector(path)
    placed = detector.grid.place(448, 400)
    canvases = np.random.default_rng(0).integers(0, 256, (8, 3, *placed.tiles.size), dtype=np.uint8)

    def in_calls(size: int) -> Callable[[], int]:
        def run() -> int:
            for start in range(0, 8, size):
                part = canvases[start:start + size]
                detector.run(part, [placed] * len(part))
            return 8
        return run

    detector.session.splits_batches = False  # the calls are made here
    return median_speed({f"calls of {size}": in_calls(size) for size in sizes}, rounds)


def attention(views: int, heads: int, rounds: int) -> dict[str, float]:
    """Milliseconds of one attention over (views, heads, 257, 64) in four forms."""
    tokens, width = 257, 64
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((views, heads, tokens, width), dtype=np.float32) for _ in range(3))

    def tensor(name: str, shape: list[int]) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    def session(nodes: list, inputs: list, outputs: list, initializers: list, microsoft: bool = False) -> Callable:
        opsets = [helper.make_opsetid("", 23)] + ([helper.make_opsetid("com.microsoft", 1)] if microsoft else [])
        model = helper.make_model(helper.make_graph(nodes, "attention", inputs, outputs, initializers),
                                  opset_imports=opsets)
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        loaded = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return loaded.run

    four = [views, heads, tokens, width]
    names = [tensor(n, four) for n in "qkv"]
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [width ** -0.5])
    unfused = session([helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
                       helper.make_node("MatMul", ["q", "kt"], ["s"]),
                       helper.make_node("Mul", ["s", "scale"], ["t"]),
                       helper.make_node("Softmax", ["t"], ["p"], axis=-1),
                       helper.make_node("MatMul", ["p", "v"], ["o"])], names, [tensor("o", four)], [scale])
    node = session([helper.make_node("Attention", ["q", "k", "v"], ["o"])], names, [tensor("o", four)], [])
    three = [views, tokens, heads * width]
    mha = session([helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"], domain="com.microsoft",
                                    num_heads=heads)], [tensor(n, three) for n in "qkv"], [tensor("o", three)], [],
                  microsoft=True)
    feed = {"q": q, "k": k, "v": v}
    merged = {n: np.ascontiguousarray(a.transpose(0, 2, 1, 3).reshape(three)) for n, a in feed.items()}
    tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
    forms: dict[str, Callable[[], object]] = {
        "MatMul + Softmax nodes": lambda: unfused(None, feed),
        "ONNX Attention (opset 23)": lambda: node(None, feed),
        "onnxruntime MultiHeadAttention": lambda: mha(None, merged),
        "torch scaled_dot_product_attention": lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)}

    def ten(form: Callable[[], object]) -> Callable[[], int]:
        def run() -> int:
            for _ in range(10):
                form()
            return 10
        return run

    speeds = median_speed({name: ten(form) for name, form in forms.items()}, rounds)
    return {name: round(1000 / per_second, 2) for name, per_second in speeds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=list(MODELS))
    parser.add_argument("--onnx", type=Path, help="an exported file to measure instead of --model's")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--batch", type=int, default=1, help="canvases per call for --profile")
    parser.add_argument("--calls", type=int, nargs="*", help="call sizes to time a batch of 8 in, e.g. 1 2 8")
    parser.add_argument("--attention", action="store_true")
    parser.add_argument("--views", type=int, default=18, help="views for --attention")
    parser.add_argument("--heads", type=int, default=2, help="heads of 64 for --attention (the tiny CLIP has 2)")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.attention:
        print(json.dumps({"attention_ms": attention(args.views, args.heads, args.rounds), "views": args.views,
                          "heads": args.heads}), flush=True)
    if not (args.profile or args.calls):
        return
    with tempfile.TemporaryDirectory(prefix="dhrclip_profile_") as work:
        path, name = args.onnx, str(args.onnx)
        if path is None:
            model, name = build(args.model, Path(work)), args.model
            path = export_onnx(model, Path(work) / "fp32.onnx", run=RunOptions(grid="auto", max_tiles=4))
        if args.profile:
            print(json.dumps({"model": name, **profile(path, args.batch)}), flush=True)
        if args.calls:
            print(json.dumps({"model": name, "images_per_s": calls(path, args.calls, args.rounds)}), flush=True)


if __name__ == "__main__":
    main()
