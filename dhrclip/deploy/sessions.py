"""The runtimes an exported file runs in, behind one small interface: onnxruntime (the default)
and OpenVINO. Each reads the file's graph and its metadata properties; neither needs PyTorch.

onnxruntime is asked for all its graph optimisations and, by default, one thread per core;
OpenVINO compiles for the CPU in float32 (its default on CPUs with bfloat16 units would be
bfloat16, which is not what the file was exported as).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import UserError


class Session(Protocol):
    """A loaded graph: its input names, its metadata properties, and a run."""

    inputs: set[str]
    metadata: dict[str, str]
    name: str  # what runs it, for logs and benchmarks
    splits_batches: bool  # whether batches run best split by the CPU budget (core.budget)

    def run(self, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(maps, scores) for the named inputs."""


class OrtSession:
    """A file in onnxruntime, on ``providers`` (default: the CPU)."""

    def __init__(self, path: Path, providers: list[str] | None = None, threads: int = 0) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise UserError("running an ONNX file needs onnxruntime: pip install -e '.[deploy]' (or "
                            "pip install onnxruntime)", field="onnx") from exc
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: fp16 graphs make the CPU provider chatty
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        try:
            self._session = onnxruntime.InferenceSession(str(path), options,
                                                         providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own error types
            raise UserError(f"onnx {path} is not a model onnxruntime can load ({exc})", field="onnx") from exc
        self.inputs = {i.name for i in self._session.get_inputs()}
        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        self.name = f"onnxruntime {onnxruntime.__version__} ({self._session.get_providers()[0]})"
        self.splits_batches = self._session.get_providers()[0] == "CPUExecutionProvider"

    def run(self, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self._session.run(None, feed)
        return maps, scores


class OpenVinoSession:
    """A file compiled by OpenVINO for the CPU."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        try:
            import openvino
        except ImportError as exc:
            raise UserError("runtime openvino needs the openvino package: pip install -e '.[openvino]' (or pip "
                            "install openvino)", field="runtime") from exc
        core = openvino.Core()
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            model = core.read_model(str(path))
            self._compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # OpenVINO's own error types
            raise UserError(f"onnx {path} is not a model OpenVINO can compile ({str(exc)[:300]})",
                            field="onnx") from exc
        info = model.get_rt_info()  # the ONNX file's metadata properties are kept under "framework"
        properties = info["framework"] if "framework" in info else {}  # noqa: SIM401 - an RTMap has no get
        self.inputs = {i.get_any_name() for i in model.inputs}
        self.metadata = {str(k): v.astype(str) if hasattr(v, "astype") else str(v) for k, v in properties.items()}
        self.name = f"OpenVINO {openvino.__version__} (CPU)"
        self.splits_batches = False  # it plans whole batches, and ran them faster than single canvases
        self._request = self._compiled.create_infer_request()

    def run(self, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        out = self._request.infer(feed)
        maps, scores = (np.asarray(out[port]) for port in self._compiled.outputs)
        return maps, scores


def open_session(path: Path, runtime: str = "onnxruntime", providers: list[str] | None = None,
                 threads: int = 0) -> Session:
    """The file at ``path`` loaded by ``runtime`` (onnxruntime or openvino)."""
    if runtime == "openvino":
        return OpenVinoSession(path, threads)
    return OrtSession(path, providers, threads)
