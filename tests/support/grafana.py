"""Dashboard and rule expressions as Grafana would send them to Prometheus."""

from __future__ import annotations

# Values Grafana would substitute; `.*` is what "All" sends for a multi-value variable.
VARIABLES = {
    "$datasource": "prometheus",
    "$model": ".*",
    "$bucket": ".*",
    "$pool": ".*",
    "$ttft_slo": "2.0",
    "$e2e_slo": "60.0",
    "$itl_slo": "0.15",
}


def substitute(expr: str, rate_interval: str = "15s", range_: str = "5m") -> str:
    """`expr` with Grafana's variables replaced (defaults: a short demo run scraped every second)."""
    values = {**VARIABLES, "$__rate_interval": rate_interval, "$__range": range_}
    for var, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr
