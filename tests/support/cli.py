"""`kvplan ...` as a user types it: a subprocess from the repository root, output captured."""

from __future__ import annotations

import os
import subprocess
import sys

from support import ROOT


def kvplan(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python -m kvplan.cli ARGS`; `env` is added to this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "kvplan.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
