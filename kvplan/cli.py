"""The `kvplan` command. Each part registers its own subcommands from its package's `cli.py`;
those modules import only typer at module level so that `kvplan size` stays light.

A command line builds only the part it names (typer builds every registered command on each
call), help is plain text (typer's boxed help imports rich and markdown-it, most of the time of
`kvplan --help`), and every usage error is one line on stderr with exit code 2, like every
other bad input.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer

try:  # typer 0.2x carries its own copy of click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # typer on the click package
    from click.exceptions import NoArgsIsHelpError, UsageError  # type: ignore[no-redef,assignment]

from kvplan.errors import KvplanError

HELP = "Capacity planning and routing for LLM serving with quantized KV caches on vLLM."

# The first word of a command line -> the module that registers it (tests/test_entry_point.py checks this
# against what each module's register() adds). Help lists them in this order.
COMMANDS = {
    "size": "kvplan.planner.cli",
    "plan": "kvplan.planner.cli",
    "serve": "kvplan.router.cli",
    "demo": "kvplan.demo.cli",
    "flags": "kvplan.control.cli",
    "rollout": "kvplan.control.cli",
    "workers": "kvplan.workers.cli",
    "worker": "kvplan.workers.sim.cli",
    "kernels": "kvplan.kernels.cli",
    "eval": "kvplan.quality.cli",
    "dashboards": "kvplan.dashboards.cli",
    "deploy": "kvplan.deploy.cli",
}


def _root() -> None:
    """Capacity planning and routing for LLM serving with quantized KV caches on vLLM."""


def _app_for(argv: list[str]) -> typer.Typer:
    """The app for this command line: only the part it names, every part for help or a typo."""
    app = typer.Typer(
        name="kvplan",
        help=HELP,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )
    app.callback()(_root)  # a group even when one part with one command is registered
    part = COMMANDS.get(argv[0]) if argv else None
    for module in [part] if part else dict.fromkeys(COMMANDS.values()):
        importlib.import_module(module).register(app)
    return app


def _plain(command: Any) -> None:
    """Plain help and errors for a command and its subcommands (the parts' own Typer apps
    default to rich)."""
    command.rich_markup_mode = None
    for sub in getattr(command, "commands", {}).values():
        _plain(sub)


def __getattr__(name: str) -> typer.Typer:
    if name == "app":  # the whole app, for typer.testing.CliRunner
        return _app_for([])
    raise AttributeError(name)


def fail(message: str) -> None:
    """Print a one-line error and exit with code 2 (bad input)."""
    typer.echo(f"error: {message}", err=True)
    raise SystemExit(2)


def _usage(exc: UsageError) -> str:
    """A usage error in one line, naming the command whose --help explains it."""
    message = " ".join(exc.format_message().split())
    where = exc.ctx.command_path if exc.ctx is not None else "kvplan"
    return f"{message} (see {where} --help)"


def main() -> None:
    argv = sys.argv[1:]
    try:
        from kvplan.planner import cli as planner_cli

        if planner_cli.run_fast(argv):
            return
        command = typer.main.get_command(_app_for(argv))
        _plain(command)
        code = command.main(argv, prog_name="kvplan", standalone_mode=False)
    except NoArgsIsHelpError as exc:  # `kvplan` or `kvplan flags` alone: the help, as click does
        typer.echo(exc.format_message(), err=True)
        sys.exit(2)
    except UsageError as exc:
        fail(_usage(exc))
    except KvplanError as exc:
        fail(str(exc))
    except (KeyboardInterrupt, typer.Abort):
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
