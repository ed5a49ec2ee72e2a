"""`kvplan serve` as a real process on a free loopback port, as an operator would run it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from kvplan.procs import router_urls
from support import ROOT
from support.procs import stop


class RouterProcess:
    """One router; its stderr goes to `<dir of the plan>/<name>.log`. With `token`, the admin API
    takes it (from `<name>.token`) and `admin` holds the header that authenticates."""

    def __init__(self, plan_path: Path, *args: str, name: str | None = None, token: str | None = None,
                 env: dict[str, str] | None = None, timeout: float = 60.0) -> None:  # fmt: skip
        name = name or plan_path.stem
        self.plan_path = plan_path
        self.log_path = plan_path.parent / f"{name}.log"
        cmd = [sys.executable, "-m", "kvplan.cli", "serve", "--plan", str(plan_path), "--port", "0"]
        cmd += ["--admin-port", "0", *args]
        self.admin: dict[str, str] = {}
        if token is not None:
            token_file = plan_path.parent / f"{name}.token"
            token_file.write_text(token + "\n")
            cmd += ["--admin-token-file", str(token_file)]
            self.admin = {"Authorization": f"Bearer {token}"}
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        try:
            urls = router_urls(self.proc, timeout)
            self.url = urls["api"]  # the OpenAI API
            self.admin_url = urls["admin"]  # the admin API and /metrics
            self.metrics_url = urls.get("metrics", self.admin_url)
        except BaseException:
            stop(self.proc)
            raise

    def log(self) -> str:
        return self.log_path.read_text()

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets but runs nothing (a stalled or partitioned router)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.resume()  # a paused process cannot act on SIGTERM
        stop(self.proc)
