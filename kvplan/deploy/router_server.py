"""How the router runs in a container: port, health path, arguments (shared by k8s and compose)."""

from __future__ import annotations

ROUTER_PORT = 8080  # the OpenAI API
# the admin API (and /metrics): loopback in a pod, where `kubectl port-forward` reaches it
ROUTER_ADMIN_PORT = 8081
ROUTER_METRICS_PORT = 9091  # /metrics alone, for Prometheus
HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
ADMIN_TOKEN_ENV = "KVPLAN_ADMIN_TOKEN"
PLAN_PATH = "/etc/kvplan/pools.yaml"
REDIS_PORT = 6379
CONTROLLER_METRICS_PORT = 9100


def router_args(flag_store_url: str, admin_host: str = "127.0.0.1") -> tuple[str, ...]:
    """Arguments of the router container (its entry point is `kvplan`): the API and /metrics on
    every interface, the admin API on `admin_host` (loopback unless the deployment publishes it)."""
    return (
        "serve", "--plan", PLAN_PATH, "--flag-store", flag_store_url,
        "--host", "0.0.0.0", "--port", str(ROUTER_PORT),
        "--admin-host", admin_host, "--admin-port", str(ROUTER_ADMIN_PORT),
        "--metrics-host", "0.0.0.0", "--metrics-port", str(ROUTER_METRICS_PORT),
    )  # fmt: skip


def controller_args(
    flag_store_url: str,
    metrics_url: str,
    metrics_port: int = CONTROLLER_METRICS_PORT,
    plan: str = PLAN_PATH,
    metrics_host: str = "0.0.0.0",
) -> tuple[str, ...]:
    """Arguments of the rollout controller (`kvplan rollout run`): it reads the plan and the
    analysis metrics (from Prometheus, or a router's own /metrics when the URL ends so), writes
    steps and aborts to the shared flag store, and serves its own series on /metrics (on every interface
    of its container by default)."""
    source = "--router-metrics" if metrics_url.endswith(METRICS_PATH) else "--prometheus"
    return (
        "rollout", "run", "--plan", plan, "--flag-store", flag_store_url, source, metrics_url,
        "--metrics-host", metrics_host, "--metrics-port", str(metrics_port),
    )  # fmt: skip
