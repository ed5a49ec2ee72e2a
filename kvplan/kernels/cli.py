"""`kvplan` subcommands for the kernels part (imports only typer at module level)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add this part's subcommands to the top-level app."""
    kernels = typer.Typer(help="Quantized-KV kernels: accuracy evaluation.", no_args_is_help=True)

    @kernels.command("eval")
    def eval_cmd(
        formats: Annotated[str, typer.Option(help="comma-separated kvplan formats")] = (
            "bf16,fp8_e4m3,int8,int8_hadamard,k8v4,int4,int4_hadamard,int4_kivi,int4_g32"
        ),
        prefix: Annotated[int, typer.Option(help="tokens that fill the cache (pass 1)")] = 512,
        scored: Annotated[int, typer.Option(help="tokens scored reading the cache (pass 2)")] = 512,
        out: Annotated[Path | None, typer.Option(help="also write the table (markdown) here")] = None,
    ) -> None:
        """Two-pass perplexity of SmolLM2-135M-Instruct with the KV cache in each format."""
        from kvplan.errors import InputError
        from kvplan.formats import parse_formats

        names = tuple(f.name for f in parse_formats(formats))
        if not names:
            raise InputError(f"--formats {formats!r}: give at least one KV format")
        if prefix < 16 or scored < 2:
            raise InputError("--prefix must be >= 16 and --scored >= 2")
        from kvplan.kernels.eval import evaluate, table

        text = table(evaluate(names, prefix, scored))
        typer.echo(text)
        if out is not None:
            out.write_text(text + "\n")

    app.add_typer(kernels, name="kernels")
