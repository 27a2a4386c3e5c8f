"""app.py and dhrclip-app: the inspection page."""
from __future__ import annotations

import argparse
import logging

from ..config import PageConfig
from ..errors import UserError
from .common import add_checkpoint_flag, add_model_flags, load_detector, run, with_reference
from .flags import add_settings, new_parser, settings_from

log = logging.getLogger("dhrclip")


def parser() -> argparse.ArgumentParser:
    p = new_parser("The inspection page: a local web page where images dropped in get their anomaly maps, scores "
                   "and decisions, with sliders for the thresholds. Model settings default to those the checkpoint "
                   "was trained with; images run as with predict.py.")
    add_checkpoint_flag(p, required=True)
    add_settings(p, PageConfig)
    add_model_flags(p, from_checkpoint=True)
    return p


def _app(args: argparse.Namespace) -> None:
    from ..core.runtime import seed_everything
    from ..detector.results import Thresholds
    from ..detector.thresholds import read_threshold_file
    from ..engine.distributed import launched_size
    from ..page.inspector import AppSettings
    from ..page.uploads import Limits

    try:
        from ..page.server import serve
    except ModuleNotFoundError as exc:
        raise UserError(f"the inspection page needs {exc.name}: install it with pip install '.[app]' "
                        f"from the project's folder (bash scripts/setup.sh does)") from exc
    if launched_size() > 1:
        raise UserError("the inspection page runs in one process; start it without torchrun")
    config = settings_from(PageConfig, args)
    model = load_detector(args, config.run)
    if model is None:
        return
    seed_everything(config.run.seed)
    if config.reference is not None:
        model = with_reference(model, config.reference, config.run)
    thresholds = Thresholds()
    if config.threshold_file is not None:
        saved = read_threshold_file(config.threshold_file)
        saved.check(model.signature(config.run))
        thresholds = saved.thresholds
    settings = AppSettings(run=config.run, thresholds=thresholds,
                           limits=Limits(max_file_bytes=int(config.max_upload_mb * 2**20),
                                         max_pixels=config.run.max_pixels,
                                         max_work_bytes=int(config.max_work_gb * 2**30)))
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: the page has no login, so anyone who reaches it can upload images",
                    config.host)
    serve(model, settings, config.host, config.port,
          ready=lambda url: print(f"the inspection page is at {url} (Ctrl+C to stop)", flush=True))


def main(argv: list[str] | None = None) -> None:
    run(_app, parser(), argv)
