"""How the router runs in a container: port, health path, arguments (shared by k8s and compose)."""

from __future__ import annotations

ROUTER_PORT = 8080
HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
ADMIN_TOKEN_ENV = "KVPLAN_ADMIN_TOKEN"
PLAN_PATH = "/etc/kvplan/pools.yaml"
REDIS_PORT = 6379
CONTROLLER_METRICS_PORT = 9100


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


def controller_args(
    flag_store_url: str, metrics_url: str, metrics_port: int = CONTROLLER_METRICS_PORT, plan: str = PLAN_PATH
) -> tuple[str, ...]:
    """Arguments of the rollout controller (`kvplan rollout run`): it reads the plan and the
    analysis metrics (from Prometheus, or a router's own /metrics when the URL ends so), writes
    steps and aborts to the shared flag store, and serves its own series on /metrics."""
    source = "--router-metrics" if metrics_url.endswith(METRICS_PATH) else "--prometheus"
    return (
        "rollout", "run", "--plan", plan, "--flag-store", flag_store_url, source, metrics_url,
        "--metrics-port", str(metrics_port),
    )  # fmt: skip
