"""Typed settings, torch-free: the model's (``model``), each run's (``run``), and how a setting
describes itself to the command line (``fields``)."""
from .model import (
                    DEFAULT_MODEL,
                    DERIVED_FIELDS,
                    GEOMETRY_FIELDS,
                    PROMPT_FIELDS,
                    REFERENCE_CHECKPOINT_DEFAULTS,
                    TAP_FIELDS,
                    ModelConfig,
                    ResolvedConfig,
                    resolve_model_config,
)
from .run import (
                    AUPRO_MODES,
                    AUTO_GRID,
                    DEFAULT_MAX_TILES,
                    EXPORT_PRECISIONS,
                    FEATURE_CACHE_MODES,
                    FIGURE_SCALES,
                    FIXED_GRID,
                    GRID_MODES,
                    MAP_NORMS,
                    METRIC_LEVELS,
                    ON_ERROR,
                    PRECISIONS,
                    DemoConfig,
                    EvalConfig,
                    ExportConfig,
                    PageConfig,
                    PredictConfig,
                    RunOptions,
                    TrainConfig,
                    is_bank_file,
                    page_run,
                    with_run,
)

__all__ = ["AUPRO_MODES", "AUTO_GRID", "DEFAULT_MAX_TILES", "DEFAULT_MODEL", "DERIVED_FIELDS", "EXPORT_PRECISIONS",
           "FEATURE_CACHE_MODES",
           "FIGURE_SCALES", "FIXED_GRID", "GEOMETRY_FIELDS", "GRID_MODES", "MAP_NORMS", "METRIC_LEVELS", "ON_ERROR",
           "PRECISIONS", "PROMPT_FIELDS", "REFERENCE_CHECKPOINT_DEFAULTS", "TAP_FIELDS", "DemoConfig", "EvalConfig",
           "ExportConfig", "ModelConfig", "PageConfig", "PredictConfig", "ResolvedConfig", "RunOptions", "TrainConfig",
           "is_bank_file", "page_run", "resolve_model_config", "with_run"]
