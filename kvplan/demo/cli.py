"""`kvplan demo`. Imports only typer at module level; the work is in kvplan.demo.run."""

from __future__ import annotations

from typing import Annotated

import typer


def demo_cmd(
    duration: Annotated[float, typer.Option(help="Stop after this many seconds (0: at Ctrl-C).")] = 0,
    rps: Annotated[float, typer.Option(min=0.1, help="Load generator: requests per second.")] = 4.0,
    port: Annotated[int, typer.Option(help="Router port (0: any free port).")] = 8080,
    prometheus: Annotated[bool, typer.Option(help="Start Prometheus when installed.")] = True,
    prometheus_port: Annotated[int, typer.Option(help="Prometheus port (busy or 0: any free port).")] = 9090,
    scrape_interval: Annotated[str, typer.Option(help="Prometheus scrape and rule interval.")] = "2s",
    redis: Annotated[
        bool, typer.Option(help="Flags in a local redis-server, a separate rollout controller.")
    ] = False,
) -> None:
    """Run the whole stack locally: router, simulated pools, load, Prometheus (no GPU, Redis or Docker)."""
    from kvplan.demo import config, run

    opts = config.DemoOptions(
        duration=duration,
        rps=rps,
        port=port,
        prometheus=prometheus,
        prometheus_port=prometheus_port,
        scrape_interval=scrape_interval,
        redis=redis,
    )
    raise typer.Exit(run.run(opts))


def register(app: typer.Typer) -> None:
    """Add this part's subcommands to the top-level app."""
    app.command("demo")(demo_cmd)
