"""`kvplan flags ...` and `kvplan rollout ...` (imports only typer at module level)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

flags_app = typer.Typer(
    help="Kill switch, weights and shadow shares per bucket, and their audit trail.", no_args_is_help=True
)
rollout_app = typer.Typer(help="Gradual rollout with automatic rollback.", no_args_is_help=True)

PlanOpt = Annotated[Path | None, typer.Option("--plan", envvar="KVPLAN_PLAN", help="pool plan (pools.yaml)")]
StoreOpt = Annotated[
    str | None, typer.Option("--flag-store", envvar="KVPLAN_FLAG_STORE", help="redis://host:port/db")
]
RouterOpt = Annotated[
    str | None,
    typer.Option("--router", envvar="KVPLAN_ROUTER", help="a router's base URL: act through its admin API"),
]
TokenOpt = Annotated[
    Path | None, typer.Option("--admin-token-file", help="router admin token file (else $KVPLAN_ADMIN_TOKEN)")
]
BucketOpt = Annotated[str, typer.Option("--bucket", help="bucket name from the plan")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="why (kept in the audit trail)")]
ActorOpt = Annotated[str | None, typer.Option("--actor", help="who (default: user@host)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


def _where(plan: Path | None, store: str | None, router: str | None, token_file: Path | None) -> Any:
    from kvplan.control.commands import Where
    from kvplan.errors import InputError

    token = os.environ.get("KVPLAN_ADMIN_TOKEN") or None
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise InputError(f"cannot read admin token file {token_file}: {exc.strerror}") from exc
    if router is None and store is None:
        raise InputError("say where the flags live: --flag-store redis://... or --router http://...")
    return Where(plan, store, router, token)


def _run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


def _actor(actor: str | None) -> str:
    from kvplan.control.commands import default_actor

    return actor or default_actor()


def _write(
    op: str, bucket: str, reason: str, actor: str | None, where: Any, as_json: bool, value: int = 0
) -> None:
    from kvplan.control.commands import dumps, flag_write

    result = _run(flag_write(where, bucket, op, _actor(actor), reason, value))
    if as_json:
        typer.echo(dumps(result))
        return
    a = result["after"]
    state = "KILLED (everyone on baseline)" if a["killed"] else f"weight {a['weight']}"
    if op == "shadow":
        state = f"shadow {a.get('shadow', 0)}% of baseline requests mirrored to the candidate"
        if a["killed"] or not a.get("candidate"):  # BucketFlags.effective_shadow is 0 then
            why = "the bucket is KILLED" if a["killed"] else "the bucket has no candidate"
            state += f" (none now: {why})"
    typer.echo(f"{bucket}: {state}  [version {result['version']}]")


def _flag_command(op: str, doc: str) -> None:
    """`kvplan flags <op>`: a kill-switch write on one bucket."""

    def command(
        bucket: BucketOpt,
        reason: ReasonOpt = "",
        actor: ActorOpt = None,
        plan: PlanOpt = None,
        flag_store: StoreOpt = None,
        router: RouterOpt = None,
        admin_token_file: TokenOpt = None,
        json: JsonOpt = False,
    ) -> None:
        _write(op, bucket, reason, actor, _where(plan, flag_store, router, admin_token_file), json)

    command.__doc__ = doc
    flags_app.command(op)(command)


_flag_command("kill", "Send every cohort of a bucket to its baseline pool (overrides any weight).")
_flag_command("unkill", "Lift the kill switch: the bucket's weight applies again.")


WeightOpt = Annotated[int, typer.Option("--weight", help="percent of cohorts on the candidate, 0..100")]
ShareOpt = Annotated[int, typer.Option("--share", help="percent of baseline requests mirrored, 0..100")]


def _set_command(name: str, op: str, value_opt: Any, doc: str) -> None:
    """`kvplan flags <name> --<option> N`: a write of one number on one bucket."""

    def command(
        bucket: BucketOpt,
        value: int,
        reason: ReasonOpt = "",
        actor: ActorOpt = None,
        plan: PlanOpt = None,
        flag_store: StoreOpt = None,
        router: RouterOpt = None,
        admin_token_file: TokenOpt = None,
        json: JsonOpt = False,
    ) -> None:
        _write(op, bucket, reason, actor, _where(plan, flag_store, router, admin_token_file), json, value)

    command.__annotations__["value"] = value_opt  # typer takes the option's name and help from it
    command.__doc__ = doc
    flags_app.command(name)(command)


_set_command(
    "set-weight", "weight", WeightOpt, "Set the share of cohorts sent to the bucket's candidate pool."
)
_set_command(
    "set-shadow",
    "shadow",
    ShareOpt,
    "Mirror a share of the bucket's baseline requests to its candidate (shadow traffic, compared).",
)


@flags_app.command("show")
def show(
    plan: PlanOpt = None,
    flag_store: StoreOpt = None,
    router: RouterOpt = None,
    admin_token_file: TokenOpt = None,
    json: JsonOpt = False,
) -> None:
    """The current flag state of every bucket."""
    from kvplan.control.commands import dumps, format_state, state

    data = _run(state(_where(plan, flag_store, router, admin_token_file)))
    typer.echo(dumps(data) if json else format_state(data))


@flags_app.command("history")
def history(
    bucket: Annotated[str | None, typer.Option("--bucket", help="only this bucket")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="newest N entries")] = 50,
    plan: PlanOpt = None,
    flag_store: StoreOpt = None,
    router: RouterOpt = None,
    admin_token_file: TokenOpt = None,
    json: JsonOpt = False,
) -> None:
    """The audit trail: who changed what, when, from what to what, and why."""
    from kvplan.control.commands import dumps, format_history
    from kvplan.control.commands import history as fetch

    rows = _run(fetch(_where(plan, flag_store, router, admin_token_file), bucket, limit))
    typer.echo(dumps(rows) if json else format_history(rows))


@rollout_app.command("start")
def rollout_start(
    bucket: BucketOpt,
    steps: Annotated[
        str, typer.Option("--steps", help="increasing weights, e.g. 10,25,50,100")
    ] = "10,25,50,100",
    interval: Annotated[str, typer.Option("--interval", help="analysis interval: 30s, 5m, 1h")] = "5m",
    failure_limit: Annotated[int, typer.Option("--failure-limit", help="failed analyses tolerated")] = 1,
    max_error_increase: Annotated[float, typer.Option(help="error-ratio tolerance (absolute)")] = 0.01,
    max_ttft_share_drop: Annotated[float, typer.Option(help="drop tolerated in share under TTFT SLO")] = 0.05,
    max_itl_share_drop: Annotated[float, typer.Option(help="drop tolerated in share under ITL SLO")] = 0.05,
    min_requests: Annotated[int, typer.Option(help="requests per pool and window, else no data")] = 20,
    min_agreement: Annotated[
        float, typer.Option(help="quality gate: mean shadow agreement the candidate keeps, 0..1 (0: off)")
    ] = 0.0,
    min_pairs: Annotated[int, typer.Option(help="shadow pairs per window for the quality gate")] = 20,
    reason: ReasonOpt = "",
    actor: ActorOpt = None,
    plan: PlanOpt = None,
    flag_store: StoreOpt = None,
    router: RouterOpt = None,
    admin_token_file: TokenOpt = None,
) -> None:
    """Start a rollout at the first step; the controller (`kvplan rollout run`) advances it."""
    from kvplan.control.analysis import Thresholds
    from kvplan.control.commands import rollout_op
    from kvplan.errors import InputError

    if not 0 <= min_agreement <= 1:
        raise InputError(f"--min-agreement is a share within 0..1, got {min_agreement}")
    th = Thresholds(
        min_requests=min_requests,
        max_error_increase=max_error_increase,
        max_ttft_share_drop=max_ttft_share_drop,
        max_itl_share_drop=max_itl_share_drop,
        min_agreement=min_agreement,
        min_pairs=min_pairs,
    )
    where = _where(plan, flag_store, router, admin_token_file)
    after = _run(
        rollout_op(
            where,
            bucket,
            "start",
            _actor(actor),
            steps=steps,
            interval=interval,
            failure_limit=failure_limit,
            thresholds=th,
            reason=reason,
        )
    )
    typer.echo(f"{bucket}: rollout {after.rollout} at weight {after.weight}")


def _simple(op: str, bucket: str, reason: str, actor: str | None, where: Any) -> None:
    from kvplan.control.commands import rollout_op

    after = _run(rollout_op(where, bucket, op, _actor(actor), reason=reason))
    typer.echo(
        f"{bucket}: rollout {after.rollout}, weight {after.weight}{' (killed)' if after.killed else ''}"
    )


def _rollout_command(op: str, doc: str) -> None:
    """`kvplan rollout <op>` for the ops that take only a bucket and a reason."""

    def command(
        bucket: BucketOpt,
        reason: ReasonOpt = "",
        actor: ActorOpt = None,
        plan: PlanOpt = None,
        flag_store: StoreOpt = None,
        router: RouterOpt = None,
        admin_token_file: TokenOpt = None,
    ) -> None:
        _simple(op, bucket, reason, actor, _where(plan, flag_store, router, admin_token_file))

    command.__doc__ = doc
    rollout_app.command(op)(command)


_rollout_command("pause", "Hold the current weight; no analysis until resumed.")
_rollout_command("resume", "Continue a paused rollout; the next analysis is one full interval from now.")
_rollout_command("abort", "Roll back now: weight 0 and kill switch on.")


@rollout_app.command("status")
def rollout_status(
    bucket: Annotated[str | None, typer.Option("--bucket", help="only this bucket")] = None,
    plan: PlanOpt = None,
    flag_store: StoreOpt = None,
    router: RouterOpt = None,
    admin_token_file: TokenOpt = None,
) -> None:
    """Phase, weight, step, failures and the last analysis of each bucket's rollout."""
    from kvplan.control.commands import rollout_status as status

    typer.echo(_run(status(_where(plan, flag_store, router, admin_token_file), bucket)))


@rollout_app.command("run")
def rollout_run(
    prometheus: Annotated[str | None, typer.Option("--prometheus", help="Prometheus base URL")] = None,
    router_metrics: Annotated[
        str | None, typer.Option("--router-metrics", help="a router's /metrics URL (no Prometheus)")
    ] = None,
    poll: Annotated[float, typer.Option("--poll", help="seconds between ticks")] = 1.0,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="serve the controller's /metrics on this port")
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="address of that listener (loopback unless you open it)")
    ] = "127.0.0.1",
    plan: PlanOpt = None,
    flag_store: StoreOpt = None,
) -> None:
    """Run the rollout controller: one analysis per interval for every progressing rollout."""
    import asyncio
    import signal

    from kvplan.control.commands import run_controller

    where = _where(plan, flag_store, None, None)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_controller(where, prometheus, router_metrics, poll, stop, metrics_port, metrics_host)

    asyncio.run(main())


def register(app: typer.Typer) -> None:
    """Add this part's subcommands to the top-level app."""
    app.add_typer(flags_app, name="flags")
    app.add_typer(rollout_app, name="rollout")
