"""Deploying a trained detector: ``export`` writes one ONNX file; ``runtime.OnnxDetector`` runs it
with numpy, Pillow and onnxruntime alone."""
from .runtime import OnnxDetector

__all__ = ["OnnxDetector"]
