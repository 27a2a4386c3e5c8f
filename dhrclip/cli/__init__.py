"""The command line: one module per command (train.py, test.py, predict.py, export.py, app.py,
demo.py, the suite and the dataset indexes), each building its flags from the settings it fills (``flags``).

This is the only package that knows about flags. Parsing needs neither torch nor the model, so
``--help`` is immediate; the library is imported once the flags are parsed. The ``*_main``
functions are the console scripts' entry points.
"""
from __future__ import annotations

from . import app, demo, export, index, predict, suite, test, train
from .common import EXIT_SKIPPED, one_line, run

train_main, train_parser = train.main, train.parser
test_main, evaluation_parser = test.main, test.parser
predict_main, prediction_parser = predict.main, predict.parser
export_main, export_parser = export.main, export.parser
app_main, app_parser = app.main, app.parser
suite_main, suite_parser = suite.main, suite.parser
demo_main, demo_parser = demo.main, demo.parser
index_main, index_parser = index.main, index.parser

__all__ = ["EXIT_SKIPPED", "app_main", "app_parser", "demo_main", "demo_parser", "evaluation_parser", "export_main",
           "export_parser", "index_main", "index_parser", "one_line", "predict_main", "prediction_parser", "run",
           "suite_main", "suite_parser", "test_main", "train_main", "train_parser"]
