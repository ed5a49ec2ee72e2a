"""`kvplan dashboards build`. Imports only typer at module level; the work is in kvplan.dashboards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

dashboards_app = typer.Typer(help="Grafana dashboards and Prometheus rules as code.", no_args_is_help=True)


@dashboards_app.command("build")
def build_cmd(
    check: Annotated[bool, typer.Option("--check", help="Fail (exit 1) if committed files differ.")] = False,
    root: Annotated[Path, typer.Option(help="Repository root to write into / check.")] = Path("."),
    plan: Annotated[Path | None, typer.Option(help="Take the SLO bounds from this plan.")] = None,
) -> None:
    """Generate dashboards/*.json, the rules, and deploy/k8s + deploy/compose for the sample plan."""
    from kvplan.dashboards import build
    from kvplan.plan import Slo, load_plan

    slo = load_plan(plan).slo if plan else Slo()
    sample = root / build.SAMPLE_PLAN
    files = build.generated_files(slo, load_plan(sample) if sample.exists() else None)
    if check:
        problems = build.drift(root, files)
        if problems:
            typer.echo("\n".join(problems), err=True)
            typer.echo(
                f"{len(problems)} generated file(s) out of date: run `kvplan dashboards build`", err=True
            )
            raise typer.Exit(1)
        typer.echo(f"{len(files)} generated files up to date")
        return
    written = build.write(root, files)
    typer.echo(f"{len(files)} files generated, {len(written)} changed" + "".join(f"\n  {p}" for p in written))


def register(app: typer.Typer) -> None:
    """Add this part's subcommands to the top-level app."""
    app.add_typer(dashboards_app, name="dashboards")
