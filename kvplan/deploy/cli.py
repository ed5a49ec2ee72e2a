"""`kvplan deploy render|compose`: a pool plan's deployment, with the plan's rules and dashboards.

Imports only typer at module level; the work is in kvplan.deploy (and kvplan.dashboards for the
rules and dashboards a deployment carries).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from kvplan.plan import Bucket, Plan

deploy_app = typer.Typer(
    help="Kubernetes manifests and a compose stack from a pool plan.", no_args_is_help=True
)


@dataclass(frozen=True)
class _Generated:
    """What a deployment carries besides its own objects: rules and dashboards for the plan."""

    plan: Plan
    generic_rules: str
    plan_rules: str
    dashboards: dict[str, Any]
    rule_groups: list[dict[str, Any]]


def _vllm_buckets(plan: Plan) -> Plan:
    """Deploy renders vLLM pools only: buckets sized for another engine are named and left out
    (run them with that engine's own deployment); a plan with no vLLM bucket is an exit 2."""
    from kvplan.errors import InputError

    kept, other = plan.vllm_part()

    def why(b: Bucket) -> str:
        return "/".join(sorted({p.engine if not p.kv_budget else "kv budget what-if" for p in b.pools}))

    names = ", ".join(f"{b.name} ({why(b)})" for b in other)
    if kept is None:
        raise InputError(f"nothing to deploy: every bucket runs on another engine than vLLM ({names})")
    if other:
        typer.echo(
            f"note: not rendered, not vLLM: bucket(s) {names}; deploy those with their engine", err=True
        )
    return kept


def _generated(plan_path: Path) -> _Generated:
    from kvplan.dashboards import build, rules
    from kvplan.plan import load_plan

    plan = _vllm_buckets(load_plan(plan_path))
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


def register(app: typer.Typer) -> None:
    """Add this part's subcommands to the top-level app."""
    app.add_typer(deploy_app, name="deploy")
