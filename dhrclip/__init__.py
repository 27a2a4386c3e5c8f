"""DHR-CLIP: zero-shot anomaly segmentation with a frozen CLIP and learned object-agnostic prompts.

    from dhrclip import DHRCLIP
    model = DHRCLIP.from_checkpoint("epoch_15.pth")
    result = model.predict("part.png")      # .anomaly_map (H, W) float32, .score

Names are imported on first use, so ``import dhrclip`` (and the commands'
help) stays fast and loads torch only when the model is needed.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from .config import EvalConfig, ModelConfig, PredictConfig, RunOptions, TrainConfig
    from .detector.facade import DHRCLIP
    from .detector.results import Prediction
    from .engine.evaluation import evaluate
    from .engine.prediction import predict
    from .engine.suite import run_suite
    from .engine.training import train
    from .errors import UserError

__version__ = "0.2.0"

_EXPORTS = {
    "DHRCLIP": "detector.facade",
    "Prediction": "detector.results",
    "ModelConfig": "config",
    "TrainConfig": "config",
    "EvalConfig": "config",
    "PredictConfig": "config",
    "RunOptions": "config",
    "UserError": "errors",
    "train": "engine.training",
    "evaluate": "engine.evaluation",
    "predict": "engine.prediction",
    "run_suite": "engine.suite",
}
__all__ = ["DHRCLIP", "EvalConfig", "ModelConfig", "PredictConfig", "Prediction", "RunOptions", "TrainConfig",
           "UserError", "__version__", "evaluate", "predict", "run_suite", "train"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dhrclip' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
