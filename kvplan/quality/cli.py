"""`kvplan eval` (imports only typer at module level)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from kvplan.quality.report import EvalReport


def _token(path: Path | None) -> str:
    from kvplan.errors import InputError

    if path is not None:
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise InputError(f"cannot read admin token file {path}: {exc.strerror}") from exc
        if token:
            return token
        raise InputError(f"admin token file {path} is empty")
    token = os.environ.get("KVPLAN_ADMIN_TOKEN", "")
    if not token:
        raise InputError(
            "forcing pools needs the router's admin token: --admin-token-file or $KVPLAN_ADMIN_TOKEN"
        )
    return token


def _print_rich(report: EvalReport) -> None:
    from rich.console import Console
    from rich.table import Table

    from kvplan.quality.report import short, table_rows

    console = Console()
    header, cells = table_rows(report)
    table = Table(title=f"kvplan eval: bucket {report.bucket}, greedy, scores in [0, 1]")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in cells:
        table.add_row(*row)
    console.print(table)
    console.print("Ranking (overall score): " + " > ".join(report.ranking()))
    for cand, regs in report.worst.items():
        if not regs:
            console.print(f"{cand}: no prompt scored below the baseline")
            continue
        worst = Table(title=f"Worst regressions: {cand}")
        for h in ("prompt", "task", "baseline", cand, "baseline answer", f"{cand} answer"):
            worst.add_column(h, overflow="fold")
        for r in regs:
            worst.add_row(r.prompt, r.task, f"{r.baseline_score:.2f}", f"{r.candidate_score:.2f}",
                          short(r.baseline_answer, 160), short(r.candidate_answer, 160))  # fmt: skip
        console.print(worst)


def eval_command(
    prompts: Annotated[Path, typer.Argument(help="prompt set, JSONL (see kvplan/quality/prompts.py)")],
    router: Annotated[str, typer.Option("--router", help="the router's OpenAI API base URL")],
    admin: Annotated[
        str, typer.Option("--admin", envvar="KVPLAN_ROUTER", help="the router's admin API URL (for its plan)")
    ],
    bucket: Annotated[
        str | None, typer.Option("--bucket", help="bucket (default: the plan's only one)")
    ] = None,
    pool: Annotated[
        list[str] | None, typer.Option("--pool", help="candidate pool to compare (repeatable; default: all)")
    ] = None,
    admin_token_file: Annotated[
        Path | None, typer.Option(help="router admin token file (else $KVPLAN_ADMIN_TOKEN)")
    ] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="per answer, when a prompt sets none")] = 64,
    concurrency: Annotated[int, typer.Option(min=1, help="requests in flight")] = 4,
    timeout: Annotated[float, typer.Option(help="seconds per request")] = 300.0,
    worst: Annotated[int, typer.Option(min=0, help="worst regressions shown per candidate")] = 5,
    json_out: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="print the report as Markdown")] = False,
    max_regression: Annotated[
        float | None,
        typer.Option(
            help="exit 1 when a candidate's overall score is below the baseline's by more than this"
        ),
    ] = None,
) -> None:
    """Score a bucket's candidate pools against its baseline on your prompts (greedy, through the router)."""
    import asyncio
    import json

    import httpx
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kvplan.errors import InputError
    from kvplan.quality.evaluate import Answers, Target, fetch_plan, pick_target, run_prompts
    from kvplan.quality.prompts import load_prompts
    from kvplan.quality.report import build_report, to_markdown
    from kvplan.quality.scoring import score

    if json_out and markdown:
        raise InputError("--json and --markdown exclude each other")
    if not timeout > 0:
        raise InputError(f"--timeout is seconds per request, above 0, got {timeout}")
    if max_regression is not None and not 0 <= max_regression <= 1:
        raise InputError(f"--max-regression is a score difference within 0..1, got {max_regression}")
    items = load_prompts(prompts)
    token = _token(admin_token_file)

    async def main() -> tuple[Target, Answers]:
        async with httpx.AsyncClient(timeout=timeout) as client:
            plan = await fetch_plan(client, admin, token)
            target = pick_target(plan, router, token, bucket, pool or [])
            progress = Progress(
                TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=Console(stderr=True), transient=True,
            )  # fmt: skip
            with progress:
                task = progress.add_task("answers", total=len(items) * len(target.pools))
                answers = await run_prompts(
                    client, target, items, max_tokens=max_tokens, concurrency=concurrency,
                    on_answer=lambda: progress.advance(task),
                )  # fmt: skip
            return target, answers

    target, answers = asyncio.run(main())
    base = answers[target.baseline]
    scores = {p: {q.id: score(q, answers[p][q.id], base[q.id]) for q in items} for p in target.pools}
    report = build_report(target.bucket, items, target.baseline, target.candidates, scores, answers, worst)
    if json_out:
        typer.echo(json.dumps({**report.to_json(), "max_regression": max_regression}, indent=2))
    elif markdown:
        typer.echo(to_markdown(report), nl=False)
    else:
        _print_rich(report)
    if max_regression is not None:
        failing = report.failing(max_regression)
        if failing:
            worst_c = max(failing, key=report.regression)
            typer.echo(
                f"regression: {', '.join(failing)} below the baseline by more than {max_regression:g} "
                f"(worst {worst_c}: {report.regression(worst_c):.3f})",
                err=True,
            )
            raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this part's subcommands to the top-level app."""
    app.command("eval")(eval_command)
