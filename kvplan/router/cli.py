"""`kvplan serve`: the routing gateway (imports only typer at module level)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def serve(
    plan: Annotated[Path, typer.Option("--plan", help="pool plan (pools.yaml); re-read when it changes")],
    host: Annotated[str, typer.Option(help="address of the OpenAI API listener")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="its port (0: any free port; the line printed at start says which)")
    ] = 8000,
    admin_host: Annotated[
        str, typer.Option(help="address of the admin API and /metrics (loopback unless you open it)")
    ] = "127.0.0.1",
    admin_port: Annotated[int, typer.Option(help="port of the admin API and /metrics (0: any)")] = 8081,
    metrics_host: Annotated[str, typer.Option(help="address of the --metrics-port listener")] = "127.0.0.1",
    metrics_port: Annotated[
        int | None, typer.Option(help="also serve /metrics alone on this port (for Prometheus)")
    ] = None,
    flag_store: Annotated[
        str | None, typer.Option("--flag-store", help="flag store URL (redis://...); default: in memory")
    ] = None,
    admin_token_file: Annotated[
        Path | None,
        typer.Option(help="file with the admin bearer token, 16+ characters (else $KVPLAN_ADMIN_TOKEN)"),
    ] = None,
    cohort_header: Annotated[
        str | None, typer.Option(help="header whose value is the cohort key (before `user` and API key)")
    ] = None,
    provenance_log: Annotated[
        str | None, typer.Option(help="file for one JSON record per request ('-': stderr)")
    ] = None,
    max_body: Annotated[int, typer.Option(help="request body limit in bytes (413 above)")] = 4 * 1024 * 1024,
    max_in_flight: Annotated[
        int, typer.Option(help="per-endpoint concurrency bound when the pool sets no max_concurrency")
    ] = 256,
    first_byte_timeout: Annotated[
        float, typer.Option(help="seconds to wait for an upstream response head")
    ] = 300.0,
    idle_timeout: Annotated[float, typer.Option(help="seconds without upstream bytes mid-response")] = 120.0,
    connect_timeout: Annotated[float, typer.Option(help="seconds to open an upstream connection")] = 2.0,
    probe_timeout: Annotated[
        float, typer.Option(help="seconds per /health probe and per /metrics load scrape (each about 1/s)")
    ] = 1.0,
    load_stale_after: Annotated[
        float,
        typer.Option(help="seconds without a load scrape before an endpoint counts as saturated (stale)"),
    ] = 3.0,
    header_timeout: Annotated[
        float, typer.Option(help="seconds a client has to send a request's headers (408 after)")
    ] = 10.0,
    body_timeout: Annotated[
        float, typer.Option(help="seconds a client may pause inside a request body (408 after)")
    ] = 30.0,
    keepalive_timeout: Annotated[
        float, typer.Option(help="seconds an idle client connection is kept open")
    ] = 75.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
    shadow_log: Annotated[
        str | None, typer.Option(help="file for sampled shadow pairs, both answers redacted ('-': stderr)")
    ] = None,
    shadow_record_share: Annotated[
        float, typer.Option(help="percent of compared shadow pairs written to --shadow-log")
    ] = 10.0,
    shadow_queue: Annotated[
        int, typer.Option(help="shadow copies waiting; beyond: dropped and counted")
    ] = 64,
    shadow_concurrency: Annotated[int, typer.Option(help="shadow copies in flight at once")] = 2,
    shadow_timeout: Annotated[float, typer.Option(help="seconds per upstream call of a shadow copy")] = 120.0,
    shadow_redact: Annotated[
        str | None,
        typer.Option(help="redaction hook module:function (str -> str) applied before a pair is stored"),
    ] = None,
) -> None:
    """Run the OpenAI-compatible gateway in front of the plan's pools."""
    from kvplan.router.run import ServeOptions, run, shadow_settings
    from kvplan.router.settings import Listen

    run(
        ServeOptions(
            plan_path=plan,
            api=Listen(host, port),
            admin=Listen(admin_host, admin_port),
            metrics=Listen(metrics_host, metrics_port) if metrics_port is not None else None,
            flag_store=flag_store,
            admin_token_file=admin_token_file,
            cohort_header=cohort_header,
            provenance_log=provenance_log,
            max_body=max_body,
            max_in_flight=max_in_flight,
            first_byte_timeout=first_byte_timeout,
            idle_timeout=idle_timeout,
            connect_timeout=connect_timeout,
            probe_timeout=probe_timeout,
            load_stale_after=load_stale_after,
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            keepalive_timeout=keepalive_timeout,
            log_level=log_level,
            shadow=shadow_settings(
                shadow_log,
                shadow_record_share,
                shadow_queue,
                shadow_concurrency,
                shadow_timeout,
                shadow_redact,
            ),
        )
    )


def register(app: typer.Typer) -> None:
    """Add this part's subcommands to the top-level app."""
    app.command("serve")(serve)
