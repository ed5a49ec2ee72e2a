"""The router's settings: limits and timeouts, saturation bounds, identity of cohorts, admin token."""

from __future__ import annotations

from dataclasses import dataclass, field

from kvplan.router.endpoints import Saturation


@dataclass(frozen=True)
class Limits:
    max_body: int = 4 * 1024 * 1024  # bytes; larger bodies get 413
    connect_timeout: float = 2.0
    first_byte_timeout: float = 300.0  # a non-streaming response's head comes after the whole generation
    idle_timeout: float = 120.0  # between two upstream bytes once the response started
    max_attempts: int = 3  # upstream tries per request, all before the first byte
    max_in_flight: int = 256  # per endpoint, when the plan's pool sets no max_concurrency
    retry_after: int = 1  # seconds, in 429s from the router
    probe_interval: float = 1.0
    probe_timeout: float = 1.0
    reload_interval: float = 1.0
    ejection_seconds: float = 5.0  # minimum time out of rotation after a passive ejection
    controller_poll: float = 1.0  # embedded rollout controller: seconds between ticks


@dataclass
class Settings:
    limits: Limits = field(default_factory=Limits)
    saturation: Saturation = field(default_factory=Saturation)
    cohort_header: bytes | None = None  # lower-case header name whose value is the cohort key
    admin_token: str | None = None
    provenance_path: str | None = None
