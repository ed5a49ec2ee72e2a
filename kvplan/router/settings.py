"""The router's settings: limits and timeouts, saturation bounds, identity of cohorts, admin token,
where it listens, shadow traffic."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from kvplan.router.endpoints import Saturation
from kvplan.router.outlier import Ejection
from kvplan.router.server import HttpLimits


@dataclass(frozen=True)
class Limits:
    connect_timeout: float = 2.0
    first_byte_timeout: float = 300.0  # a non-streaming response's head comes after the whole generation
    idle_timeout: float = 120.0  # between two upstream bytes once the response started
    max_attempts: int = 3  # upstream tries per request, all before the first byte
    max_in_flight: int = 256  # per endpoint, when the plan's pool sets no max_concurrency
    retry_after: int = 1  # seconds, in 429s from the router
    probe_interval: float = 1.0
    probe_timeout: float = 1.0
    probe_failures: int = 3  # probes failed in a row that mark a healthy endpoint unhealthy
    reload_interval: float = 1.0
    ejection: Ejection = field(default_factory=Ejection)  # passive ejection by requests
    controller_poll: float = 1.0  # embedded rollout controller: seconds between ticks


class Listen(NamedTuple):
    host: str
    port: int  # 0: any free port


MIN_ADMIN_TOKEN = 16  # characters; a shorter admin token is refused at start


@dataclass(frozen=True)
class ShadowSettings:
    """Shadow traffic (kvplan.router.shadow); the share per bucket lives in the flag store."""

    queue: int = 64  # copies waiting to be sent; beyond this they are dropped (queue_full)
    concurrency: int = 2  # copies in flight at once
    timeout: float = 120.0  # seconds per upstream call of a copy
    record_share: float = 10.0  # percent of compared pairs written as records (with a log path)
    log_path: str | None = None  # JSON lines of sampled pairs ('-': stderr)
    redact: Callable[[str], str] | None = None  # applied before a record is stored; None: the default


@dataclass
class Settings:
    limits: Limits = field(default_factory=Limits)
    http: HttpLimits = field(default_factory=HttpLimits)  # every client input, on every listener
    saturation: Saturation = field(default_factory=Saturation)
    cohort_header: bytes | None = None  # lower-case header name whose value is the cohort key
    admin_token: str | None = None
    provenance_path: str | None = None
    shadow: ShadowSettings = field(default_factory=ShadowSettings)
