"""How the router runs in a container: port, health path, arguments (shared by k8s and compose)."""

from __future__ import annotations

ROUTER_PORT = 8080
HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
ADMIN_TOKEN_ENV = "KVPLAN_ADMIN_TOKEN"
PLAN_PATH = "/etc/kvplan/pools.yaml"
REDIS_PORT = 6379


def router_args(flag_store_url: str, port: int = ROUTER_PORT) -> tuple[str, ...]:
    """Arguments of the router container (its entry point is `kvplan`)."""
    return (
        "serve",
        "--plan",
        PLAN_PATH,
        "--flag-store",
        flag_store_url,
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
    )


def controller_args(flag_store_url: str, prometheus_url: str) -> tuple[str, ...]:
    """Arguments of the rollout controller (`kvplan rollout run`): it reads the plan and the
    analysis metrics from Prometheus, and writes steps and aborts to the shared flag store."""
    return (
        "rollout",
        "run",
        "--plan",
        PLAN_PATH,
        "--flag-store",
        flag_store_url,
        "--prometheus",
        prometheus_url,
    )
