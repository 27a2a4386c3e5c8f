"""Flags made from settings: every field declared with ``config.fields.setting`` becomes a flag of
its name (or the one it names), with its type, choices, default and help, so that a setting's
default and help exist once, in ``dhrclip/config``. Parsed flags go back into the settings
classes with ``settings_from``.
"""
from __future__ import annotations

import argparse
import re
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, Field, fields, is_dataclass
from pathlib import Path
from typing import Any

from ..config import (
    FIXED_GRID,
    DemoConfig,
    EvalConfig,
    ExportConfig,
    ModelConfig,
    PageConfig,
    PredictConfig,
    TrainConfig,
)
from ..config.fields import flag_name
from ..errors import UserError

SETTINGS = (ModelConfig, TrainConfig, EvalConfig, PredictConfig, ExportConfig, PageConfig, DemoConfig)


class HelpFormatter(argparse.HelpFormatter):
    """Shows "(default: X)" for every flag with a default other than None and False."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, argparse.SUPPRESS, False) and "default" not in text:
            shown = " ".join(map(str, action.default)) if isinstance(action.default, list) else action.default
            text += f" (default: {shown})"
        return text


def new_parser(description: str, prog: str | None = None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=description, prog=prog, formatter_class=HelpFormatter)


def path_arg(value: str) -> Path:
    return Path(value).expanduser()


def _leaves(cls: type) -> Iterable[tuple[Field, type]]:
    """Every settings field of ``cls``, nested settings opened, with its resolved type."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        kind = hints[f.name]
        if is_dataclass(kind):
            yield from _leaves(kind)  # type: ignore[arg-type]
        else:
            yield f, kind


def aliases() -> dict[str, tuple[str, ...]]:
    """Settings whose flags have other names than their fields: field -> its flags."""
    found: dict[str, set[str]] = {}
    for cls in SETTINGS:
        for f, _ in _leaves(cls):
            flag = flag_name(f)
            if flag is not None and flag != f.name:
                found.setdefault(f.name, set()).add(flag)
    return {name: tuple(sorted(flags)) for name, flags in found.items()}


def as_flags(text: str) -> str:
    """A help text with the settings it names in backquotes shown as their flags."""
    names = aliases()
    return re.sub(r"`(\w+)`", lambda m: f"--{names.get(m.group(1), (m.group(1),))[0]}", text)


def _plain(kind: Any) -> tuple[Any, bool]:
    """The type of a setting without None, and whether it takes several values."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        kind = options[0] if len(options) == 1 else kind
    origin = typing.get_origin(kind)
    if origin in (list, tuple):
        return typing.get_args(kind)[0], True
    return kind, False


def _converter(f: Field, kind: Any) -> Callable[[str], Any]:
    parse = f.metadata.get("parse")
    if parse is not None:
        def convert(value: str) -> Any:
            try:
                return parse(value)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None
        return convert
    return path_arg if kind is Path else kind


def _defaults(cls: type) -> dict[str, Any]:
    """Each leaf field's default, nested settings' from their own class's default instance."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            instance = f.default_factory() if f.default_factory is not MISSING else f.default
            out.update({name: getattr(instance, name) for name in _defaults(hints[f.name])})
        else:
            out[f.name] = f.default
    return out


def default_of(cls: type, name: str) -> Any:
    """The default of setting ``name`` of ``cls`` (a nested setting's within ``cls``'s default)."""
    return _defaults(cls)[name]


def add_settings(parser: argparse.ArgumentParser, cls: type, only: Iterable[str] | None = None,
                 exclude: Iterable[str] = (), defaults: dict[str, Any] | None = None,
                 unset: Callable[[Any], str] | None = None, group: str | None = None) -> None:
    """Flags for the settings of ``cls`` (nested settings included): ``only`` and ``exclude`` pick
    fields by name; ``defaults`` replaces some defaults; ``unset``: every flag defaults to None
    ("not given") and its help ends with ``unset(the setting's default)``; ``group``: the help
    section of fields that name none."""
    wanted = set(only) if only is not None else None
    default_values = {**_defaults(cls), **(defaults or {})}
    sections: dict[str | None, argparse._ActionsContainer] = {None: parser}
    for f, kind in _leaves(cls):
        flag = flag_name(f)
        if flag is None or (wanted is not None and f.name not in wanted) or f.name in exclude:
            continue
        title = f.metadata.get("group") or group
        if title not in sections:
            sections[title] = parser.add_argument_group(title)
        value = default_values[f.name]
        required = value is MISSING and not f.metadata.get("optional_flag")
        default = None if value is MISSING else value
        text = as_flags(f.metadata["help"])
        if unset is not None:
            text += f" ({unset(value)})"
            default = None
        options: dict[str, Any] = {"dest": flag, "help": text}
        base, several = _plain(kind)
        if base is bool:
            options.update(action="store_true", default=bool(default))
        else:
            options.update(type=_converter(f, base), default=list(default) if isinstance(default, tuple) else default)
            if several:
                options["nargs"] = "+"
            if f.metadata.get("choices"):
                options["choices"] = f.metadata["choices"]
            if required:
                options["required"] = True
        sections[title].add_argument(f"--{flag}", **options)


def settings_from(cls: type, args: argparse.Namespace, **given: Any) -> Any:
    """An instance of settings class ``cls`` from parsed flags: fields without a flag in ``args``
    keep their defaults; ``given`` sets fields by name (nested settings' too)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            base: Any = f.default_factory() if f.default_factory is not MISSING else f.default
            nested = {g.name: getattr(base, g.name) for g in fields(base)}
            nested.update({g.name: _flag_value(g, args) for g in fields(base) if _given(g, args)})
            nested.update({k: v for k, v in given.items() if k in nested})
            values[f.name] = type(base)(**nested)
        elif f.name in given:
            values[f.name] = given[f.name]
        elif _given(f, args):
            values[f.name] = _flag_value(f, args)
    made = cls(**values)
    run = getattr(made, "run", None)
    if run is not None and run.grid == FIXED_GRID and "max_tiles" in getattr(args, "written", ()):
        raise UserError("max_tiles bounds the tiles of `grid` auto; `grid` fixed always cuts tiles_per_side × "
                        "tiles_per_side tiles", field="max_tiles")
    return made


def _given(f: Field, args: argparse.Namespace) -> bool:
    name = flag_name(f)
    return name is not None and hasattr(args, name)


def _flag_value(f: Field, args: argparse.Namespace) -> Any:
    return getattr(args, flag_name(f) or f.name)


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The destinations of the flags written on the command line ``argv``, whatever their values
    (a flag given with its default value is still given): ``argv`` parsed again with every
    default suppressed."""
    saved = [(action, action.default, action.required) for action in parser._actions]
    try:
        for action, _, _ in saved:
            action.default, action.required = argparse.SUPPRESS, False
        return set(vars(parser.parse_known_args(argv)[0]))
    finally:
        for action, default, required in saved:
            action.default, action.required = default, required


def explicit_settings(cls: type, args: argparse.Namespace, written: set[str]) -> dict[str, Any]:
    """The settings of ``cls`` (nested ones included) whose flags are among the ``written``
    destinations (``explicit_flags``), by setting name."""
    return {f.name: _flag_value(f, args) for f, _ in _leaves(cls) if flag_name(f) in written}


def given_settings(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The settings of ``cls`` given as flags (those whose flags default to None: not given)."""
    return {f.name: _flag_value(f, args) for f, _ in _leaves(cls) if _given(f, args)}
