"""What every command shares: running a command with one-line errors, the model flags, and loading
the detector a checkpoint describes. Nothing here imports torch at module level, so ``--help``
is immediate; the library is imported once the flags are parsed."""
from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config import ModelConfig, ResolvedConfig, RunOptions, is_bank_file
from ..errors import UserError
from ..files import os_error
from .flags import add_settings, aliases, default_of, explicit_flags, given_settings, path_arg

if TYPE_CHECKING:  # annotations only: --help must not import torch
    from ..detector.facade import DHRCLIP

log = logging.getLogger("dhrclip")

EXIT_SKIPPED = 3  # some inputs could not be read (they have error rows)
MODEL_GROUP = "model (saved in every checkpoint)"


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def add_model_flags(parser: argparse.ArgumentParser, from_checkpoint: bool) -> None:
    """Flags that shape the model, all defaulting to "not given": with ``from_checkpoint`` they
    fall back on what the checkpoint recorded, otherwise on the authors' settings. Also
    ``--print_config`` and ``--debug``."""
    def unset(default: Any) -> str:
        return (f"default: the checkpoint's; new models {_shown(default)}" if from_checkpoint
                else f"default: {_shown(default)}")

    add_settings(parser, ModelConfig, unset=unset, group=MODEL_GROUP)
    parser.add_argument("--print_config", action="store_true",
                        help="print the effective model settings and where each comes from, then exit")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")


def add_checkpoint_flag(parser: argparse.ArgumentParser, **options: Any) -> None:
    parser.add_argument("--checkpoint_path", type=path_arg, **{
        "help": "prompt checkpoint file, or a folder (its latest epoch_N.pth)", **options})


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The model flags given on the command line (None = not given)."""
    return given_settings(ModelConfig, args)


def join_processes(device: str) -> str:
    """Under torchrun, join the other processes and return this one's device."""
    from ..engine.distributed import start

    return start(device)


def print_config(resolved: ResolvedConfig) -> None:
    print(resolved.describe())


def load_detector(args: argparse.Namespace, run: RunOptions) -> DHRCLIP | None:
    """The detector of ``--checkpoint_path`` with the model flags given, on ``run``'s device and
    precision; with ``--print_config``, its settings are printed instead (None)."""
    from ..detector.facade import DHRCLIP

    overrides = {k: v for k, v in model_overrides(args).items() if k != "pretrained"}
    if args.print_config:
        print_config(DHRCLIP.resolve_config(args.checkpoint_path, args.pretrained, **overrides))
        return None
    return DHRCLIP.from_checkpoint(args.checkpoint_path, pretrained=args.pretrained, device=join_processes(run.device),
                                   precision=run.precision, **overrides)


def with_reference(model: DHRCLIP, reference: str, run: RunOptions) -> DHRCLIP:
    """``model`` with the few-shot bank of a reference flag: a saved bank, or good images to build one from."""
    from ..data.images import collect_images

    images = None if is_bank_file(reference) else collect_images(reference, None, "reference")[0]
    return model.with_reference(reference if images is None else images, run)


def run(main: Callable[[argparse.Namespace], object], parser: argparse.ArgumentParser,
        argv: list[str] | None = None) -> None:
    """Parse flags and run ``main``; user mistakes, and failures of the machine rather than of the
    program (a full disk, CUDA memory, a process of the job lost), end as one line on stderr with
    status 2."""
    args = parser.parse_args(argv)
    args.written = explicit_flags(parser, argv)  # which flags the user wrote, for commands that merge settings
    debug = getattr(args, "debug", False)
    rank, processes = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    level = logging.DEBUG if debug else logging.INFO if rank == 0 else logging.WARNING  # torchrun: rank 0 reports
    logging.basicConfig(level=level, datefmt="%H:%M:%S",
                        format=f"%(asctime)s {f'[rank {rank}] ' if processes > 1 else ''}%(levelname)s %(message)s")
    if processes > 1:  # torchrun ends the other processes with SIGTERM when one fails
        signal.signal(signal.SIGTERM, _stopped_by_torchrun)
    try:
        main(args)
    except UserError as exc:
        if debug:
            raise
        fail(one_line(exc, {action.dest for action in parser._actions}))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except _Terminated:
        fail(f"process {rank} of {processes} stopped: torchrun ended it, as it ends every process of a job once "
             f"one has failed; the failed one's error is above, and torchrun's summary names its rank")
    except Exception as exc:
        message = None if debug else machine_failure(exc, getattr(args, "batch_size", None), rank, processes)
        if message is None:
            raise
        fail(message)
    finally:
        if "torch.distributed" in sys.modules:
            from ..engine.distributed import stop
            stop()


class _Terminated(Exception):
    """SIGTERM under torchrun, raised where the process is so that it unwinds (and cleans up)."""


def _stopped_by_torchrun(signum: int, frame: object) -> None:
    raise _Terminated


_MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                   errno.ENAMETOOLONG}
_PEER_LOST = re.compile(r"connection (reset|closed) by peer|broken pipe|gloo|nccl", re.IGNORECASE)


def machine_failure(exc: Exception, batch_size: int | None, rank: int, processes: int) -> str | None:
    """The one-line message for a failure of the machine rather than of the program, or None."""
    if type(exc).__name__ == "OutOfMemoryError":
        return f"CUDA ran out of memory at --batch_size {batch_size}; try a smaller --batch_size"
    cause = os_error(exc)
    if cause is not None and cause.errno in _MACHINE_ERRNOS:
        return f"{cause.strerror}: {cause.filename}" if cause.filename else f"{cause.strerror} ({exc})"
    if processes > 1 and isinstance(exc, RuntimeError) and _PEER_LOST.search(str(exc)):
        lost = f"process {1 - rank}" if processes == 2 else "another process"
        return (f"process {rank} of {processes} stopped: {lost} of this torchrun job died while they exchanged "
                f"results; its own error, if it left one, is above, and torchrun's summary names its exit code")
    return None


def grid_from(parser: argparse.ArgumentParser, source: str) -> None:
    """Leave --grid and --max_tiles unset by default, so that a run can take them from ``source``
    (a file it reads) when they are not given."""
    for action in parser._actions:
        if action.dest in ("grid", "max_tiles"):
            action.help = f"{action.help or ''} (default: {action.default}; {source})"
            action.default = None


def resolved_grid(args: argparse.Namespace, record: dict[str, Any] | None, cls: type) -> dict[str, Any]:
    """``grid`` and ``max_tiles`` as given, else as ``record`` (a file's grid) has them, else the
    defaults of ``cls``."""
    mode = args.grid or (record["mode"] if record else default_of(cls, "grid"))
    most = args.max_tiles or (record.get("max_tiles") if record else None) or default_of(cls, "max_tiles")
    return {"grid": mode, "max_tiles": most}


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def one_line(exc: UserError, flags: set[str] | None = None) -> str:
    """The user's message on one line, also when a DataLoader worker wrapped it in its
    traceback, with the settings it names shown as flags: the field at fault, and any
    other setting whose name has an underscore (such names never occur in prose), and any name
    in backquotes (a setting without an underscore, such as `resume`). A name in quotes or
    after a dot is a field of a file ("config.sigma"), not a flag, and stays."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(f"{UserError.__name__}: ", 1)[-1]
    names = {getattr(exc, "field", None)} | {name for name in flags or () if "_" in name}
    renamed = aliases()

    def flag_of(name: str) -> str | None:
        return next((f for f in (name, *renamed.get(name, ())) if flags is None or f in flags), None)

    for name in sorted(filter(None, names), key=len, reverse=True):
        flag = flag_of(name)
        if flag:
            text = re.sub(rf"(?<![-\w/.\"`]){re.escape(name)}(?![\w/.\"`])", f"--{flag}", text)
    return re.sub(r"`(\w+)`", lambda m: f"--{flag_of(m[1]) or m[1]}" if flag_of(m[1]) else m[1], text)
