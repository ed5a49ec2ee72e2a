"""`kvplan dashboards build`, `kvplan deploy render|compose` and `kvplan demo`.

Imports only typer at module level; the work happens in kvplan.dashboards.* and kvplan.deploy.*.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from kvplan.plan import Plan

dashboards_app = typer.Typer(help="Grafana dashboards and Prometheus rules as code.", no_args_is_help=True)
deploy_app = typer.Typer(
    help="Kubernetes manifests and a compose stack from a pool plan.", no_args_is_help=True
)


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


@dataclass(frozen=True)
class _Generated:
    """What a deployment carries besides its own objects: rules and dashboards for the plan."""

    plan: Plan
    generic_rules: str
    plan_rules: str
    dashboards: dict[str, Any]
    rule_groups: list[dict[str, Any]]


def _generated(plan_path: Path) -> _Generated:
    from kvplan.dashboards import build, rules
    from kvplan.plan import load_plan

    plan = load_plan(plan_path)
    return _Generated(
        plan,
        build.rules_text(plan.slo),
        build.plan_rules_text(rules.plan_rule_groups(plan)),
        dict(build.dashboard_json(plan.slo)),
        [*rules.rule_groups(plan.slo), *rules.plan_rule_groups(plan)],
    )


@deploy_app.command("render")
def render_cmd(
    plan: Annotated[Path, typer.Option(help="The pool plan (pools.yaml).")],
    out: Annotated[Path, typer.Option(help="Output directory (stale *.yaml there are removed).")],
    namespace: Annotated[str, typer.Option(help="Kubernetes namespace.")] = "kvplan",
    router_image: Annotated[str | None, typer.Option(help="Router image.")] = None,
    vllm_image: Annotated[str | None, typer.Option(help="vLLM image with the kvplan plugin.")] = None,
    prometheus_url: Annotated[
        str | None, typer.Option(help="Prometheus the rollout controller queries (in-cluster URL).")
    ] = None,
) -> None:
    """Render Kubernetes manifests for a plan: router, Redis, one vLLM Deployment per pool, monitoring."""
    from dataclasses import replace

    from kvplan.deploy import k8s

    gen = _generated(plan)
    opts = k8s.RenderOptions(namespace=namespace)
    if prometheus_url:
        opts = replace(opts, prometheus_url=prometheus_url)
    if router_image:
        opts = replace(opts, images=replace(opts.images, router=router_image))
    if vllm_image:
        opts = replace(opts, images=replace(opts.images, vllm=vllm_image))
    files = k8s.render(gen.plan, opts, gen.rule_groups, gen.dashboards)
    written = k8s.write_manifests(files, out)
    typer.echo(f"{sum(len(d) for d in files.values())} objects in {len(written)} files under {out}/")
    typer.echo(
        f"next: kubectl create namespace {namespace}; kubectl -n {namespace} create secret generic "
        f"kvplan-admin --from-literal=token=...; kubectl apply -f {out}/"
    )


@deploy_app.command("compose")
def compose_cmd(
    plan: Annotated[Path, typer.Option(help="The pool plan (pools.yaml).")],
    out: Annotated[Path, typer.Option(help="Output directory for compose.yaml and its config.")],
    gpus: Annotated[int, typer.Option(min=1, help="GPUs on the host (each pool reserves its own).")] = 8,
) -> None:
    """Render a compose stack for one GPU host: router, Redis, Prometheus, Grafana, one vLLM per pool."""
    from kvplan.deploy import compose

    gen = _generated(plan)
    opts = compose.ComposeOptions(gpus=gpus)
    files = compose.render(gen.plan, opts, gen.generic_rules, gen.plan_rules, gen.dashboards)
    compose.write(files, out)
    typer.echo(
        f"{len(files)} files under {out}/; "
        f"start with: cd {out} && KVPLAN_ADMIN_TOKEN=... docker compose up -d"
    )


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
    from kvplan.demo import run as demo

    opts = demo.DemoOptions(
        duration=duration,
        rps=rps,
        port=port,
        prometheus=prometheus,
        prometheus_port=prometheus_port,
        scrape_interval=scrape_interval,
        redis=redis,
    )
    raise typer.Exit(demo.run(opts))


def register(app: typer.Typer) -> None:
    """Add this part's subcommands to the top-level app."""
    app.add_typer(dashboards_app, name="dashboards")
    app.add_typer(deploy_app, name="deploy")
    app.command("demo")(demo_cmd)
