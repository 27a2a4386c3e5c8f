"""Settings as dataclass fields that describe themselves, and the checks they share.

Each setting is declared once, with ``setting(...)``: its default, its help text and, where the
command line calls it otherwise, its flag name. The command line builds its flags from these
fields (``dhrclip/cli/flags.py``), so a default and its help exist in one place. Help texts name
other settings in backquotes (```grid```); the command line shows them as flags.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, field
from typing import Any

from ..errors import UserError

NO_FLAG = ""  # a setting the command line does not offer


def setting(default: Any = MISSING, *, help: str = "", flag: str | None = None,
            choices: Sequence[str] | None = None, parse: Callable[[str], Any] | None = None,
            group: str | None = None, factory: Callable[[], Any] | None = None,
            optional_flag: bool = False) -> Any:
    """A dataclass field with what the command line needs to offer it.

    ``flag``: the flag's name when it is not the field's (``NO_FLAG``: none); ``parse``: turns
    the flag's text into the value (raising ``ValueError`` with a message); ``group``: the help
    section; ``optional_flag``: a field without a default whose flag may be left out, the
    command then supplying the value (a data path derived from the dataset's name)."""
    metadata = {"help": help, "flag": flag, "choices": tuple(choices) if choices else None, "parse": parse,
                "group": group, "optional_flag": optional_flag}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def flag_name(f: Field) -> str | None:
    """The flag a field is offered under, or None."""
    name = f.metadata.get("flag")
    if name == NO_FLAG or "help" not in f.metadata:
        return None
    return name or f.name


def require(condition: bool, name: str, message: str) -> None:
    """Refuse a setting ``name`` whose value breaks ``message``'s rule."""
    if not condition:
        raise UserError(f"{name} {message}", field=name)


def positive(config: object, *names: str) -> None:
    for name in names:
        require(getattr(config, name) >= 1, name, f"must be at least 1, got {getattr(config, name)}")


def choice(config: object, name: str, choices: Sequence[str]) -> None:
    value = getattr(config, name)
    require(value in choices, name, f"must be one of {', '.join(choices)}, got {value!r}")


def whole(value: Any, name: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int, from ``low`` to ``high`` where given: True, 2.0 and "2" are not whole
    numbers here, so a damaged file cannot slip a wrong type past the checks."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{name} must be a whole number, got {_shown(value)}", field=name)
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise UserError(f"{name} must be a whole number {span}, got {value}", field=name)
    return value


def number(value: Any, name: str, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` as a finite float in [low, high] (True is not a number here, nor NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
        raise UserError(f"{name} must be a finite number, got {_shown(value)}", field=name)
    if not low <= value <= high:
        raise UserError(f"{name} must be a number from {low:g} to {high:g}, got {value}", field=name)
    return float(value)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


def text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise UserError(f"{name} must be a non-empty text, got {_shown(value)}", field=name)
    return value


def _shown(value: Any) -> str:
    """A value as messages show it, cut short: a damaged file may hold anything."""
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def recorded(exc: UserError, where: str, prefix: str = "", field: str | None = None) -> UserError:
    """A check's refusal of a value read from a file: the file first, then the value's place in it
    in quotes (``"config.sigma"``), so that it is not taken for a setting the user gave.
    ``field``: the setting that named the file."""
    message, name = str(exc), exc.field or ""
    if name and message.startswith(name):
        message = f'"{prefix}{name}"{message[len(name):]}'
    return UserError(f"{where}: {message}", field=field)


def workers(value: str) -> int | str:
    """DataLoader workers as typed: ``auto`` or a count."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"expected auto or a number, got {value!r}") from None
