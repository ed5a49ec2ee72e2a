"""Container images the renderers use by default (override with the CLI's --*-image options)."""

from __future__ import annotations

from dataclasses import dataclass

from kvplan.deploy.vllm_server import VLLM_VERSION


@dataclass(frozen=True)
class Images:
    router: str = "ghcr.io/kvplan/kvplan:0.1.0"  # deploy/docker/Dockerfile
    vllm: str = f"ghcr.io/kvplan/kvplan-vllm:{VLLM_VERSION}"  # deploy/docker/Dockerfile.vllm: + kvplan plugin
    redis: str = "redis:7.2-alpine"
    prometheus: str = "prom/prometheus:v2.53.2"
    grafana: str = "grafana/grafana:11.3.0"
