"""`kvplan` subcommands for the simulated worker (imports only typer at module level)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this part's subcommands to the top-level app."""
    del app
