"""The `kvplan` command. Each part registers its own subcommands from its package's `cli.py`;
those modules import only typer at module level so that `kvplan size` stays light."""

from __future__ import annotations

import sys

import typer

from kvplan.errors import KvplanError

app = typer.Typer(
    name="kvplan",
    help="Capacity planning and routing for LLM serving with quantized KV caches on vLLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from kvplan.control import cli as control_cli
    from kvplan.dashboards import cli as dashboards_cli
    from kvplan.demo import cli as demo_cli
    from kvplan.deploy import cli as deploy_cli
    from kvplan.kernels import cli as kernels_cli
    from kvplan.planner import cli as planner_cli
    from kvplan.router import cli as router_cli
    from kvplan.workers import cli as workers_cli
    from kvplan.workers.sim import cli as sim_cli

    for module in (
        planner_cli,
        router_cli,
        control_cli,
        workers_cli,
        sim_cli,
        kernels_cli,
        dashboards_cli,
        deploy_cli,
        demo_cli,
    ):
        module.register(app)


_register()


def fail(message: str) -> None:
    """Print a one-line error and exit with code 2 (bad input)."""
    typer.echo(f"error: {message}", err=True)
    raise SystemExit(2)


def _app_for(argv: list[str]) -> typer.Typer:
    """`kvplan size` must start in < 0.3 s: typer builds every registered command on each call
    (~0.1 s for the whole app), so the planner's commands run from a small app of their own."""
    if argv[:1] in (["size"], ["plan"]):
        from kvplan.planner import cli as planner_cli

        planner_app = typer.Typer(name="kvplan", add_completion=False, pretty_exceptions_enable=False)
        planner_cli.register(planner_app)
        return planner_app
    return app


def main() -> None:
    argv = sys.argv[1:]
    try:
        from kvplan.planner import cli as planner_cli

        if not planner_cli.run_fast(argv):
            _app_for(argv)()
    except KvplanError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
