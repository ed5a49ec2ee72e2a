"""Run a typer-annotated command with argparse, for `kvplan size` / `kvplan plan` start-up speed.

typer (0.2x) coerces every argument through pydantic TypeAdapters, and importing pydantic plus
building those adapters is about a third of `kvplan size`'s start-up. The commands keep their one
definition (the typer signature in `planner/cli.py`); this reads that signature and parses argv
with argparse instead. `--help` still goes through typer. Only the parameter kinds the planner's
commands use are supported (str, int, float, bool, Path, optional of those).
"""

import argparse
import inspect
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from typer.models import ArgumentInfo, OptionInfo


class _OneLineParser(argparse.ArgumentParser):
    """Bad flags exit 2 with one `error:` line, like every other kvplan input error."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {self.prog}: {message}\n")
        raise SystemExit(2)


def _base(hint: Any) -> tuple[type, Any]:
    """(value type, typer info) from `Annotated[T | None, typer.Option(...)]`."""
    args = typing.get_args(hint)
    inner, info = args[0], next((a for a in args[1:] if isinstance(a, OptionInfo | ArgumentInfo)), None)
    options = [a for a in typing.get_args(inner) if a is not type(None)] or [inner]
    return options[0], info


def _convert(kind: type) -> Callable[[str], Any]:
    if kind in (int, float):
        return kind
    if kind is Path:
        return Path
    return str


def parser_for(name: str, func: Callable[..., Any]) -> argparse.ArgumentParser:
    parser = _OneLineParser(prog=f"kvplan {name}", add_help=False, allow_abbrev=False)
    hints = typing.get_type_hints(func, include_extras=True)
    for pname, param in inspect.signature(func).parameters.items():
        kind, info = _base(hints[pname])
        required = param.default is inspect.Parameter.empty
        if isinstance(info, ArgumentInfo):
            parser.add_argument(
                pname, nargs=None if required else "?", default=param.default, type=_convert(kind)
            )
            continue
        # Under Annotated, typer reads Option("--name", "-n") as declarations, the first one
        # arriving as `default`.
        first = [info.default] if info and isinstance(info.default, str) else []
        decls = [d for d in (*first, *(info.param_decls if info else ())) if d.startswith("-")]
        if kind is bool:
            if decls:
                parser.add_argument(*decls, dest=pname, action="store_true", default=param.default)
            else:  # typer's default for a bool option: --flag/--no-flag
                flag = "--" + pname.replace("_", "-")
                parser.add_argument(
                    flag, dest=pname, action=argparse.BooleanOptionalAction, default=param.default
                )
            continue
        decls = decls or ["--" + pname.replace("_", "-")]
        parser.add_argument(*decls, dest=pname, type=_convert(kind), default=param.default, required=required)
    return parser


def run(name: str, func: Callable[..., Any], argv: list[str]) -> None:
    """Parse `argv` (after the command name) for `func` and call it."""
    namespace = parser_for(name, func).parse_args(argv)
    func(**vars(namespace))
