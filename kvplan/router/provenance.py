"""One structured record per request, written off the hot path.

The proxy appends a tuple to a bounded deque (no formatting, no I/O); a background task turns
the records into JSON lines every `interval` seconds. When the sink falls behind, the oldest
records are dropped and counted rather than letting memory grow.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import deque
from typing import IO

FIELDS = (
    "ts",
    "request_id",
    "bucket",
    "pool",
    "regime",
    "endpoint",
    "reason",
    "prompt_tokens",
    "needed_tokens",
    "status",
    "outcome",
    "attempts",
    "ttft_s",
    "e2e_s",
    "stream",
)

Record = tuple[object, ...]


class ProvenanceLog:
    def __init__(
        self,
        path: str | None,
        capacity: int = 100_000,
        interval: float = 0.5,
        fields: tuple[str, ...] = FIELDS,
    ) -> None:
        self.path = path
        self.fields = fields
        self.interval = interval
        self._records: deque[Record] = deque(maxlen=capacity)
        self.written = 0
        self.appended = 0
        self._task: asyncio.Task[None] | None = None
        self._out: IO[str] | None = None

    def append(self, record: Record) -> None:
        self._records.append(record)
        self.appended += 1

    @property
    def dropped(self) -> int:
        return self.appended - self.written - len(self._records)

    def flush(self) -> None:
        records, n = self._records, len(self._records)
        if not n:
            return
        if self._out is None:
            if self.path is None:  # no sink configured: records are counted, not kept
                records.clear()
                self.written += n
                return
            self._out = sys.stderr if self.path == "-" else open(self.path, "a", buffering=1 << 16)  # noqa: SIM115
        lines = []
        for _ in range(n):
            lines.append(json.dumps(dict(zip(self.fields, records.popleft(), strict=True))))
        self._out.write("\n".join(lines) + "\n")
        self._out.flush()
        self.written += n

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.flush()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.flush()
        if self._out is not None and self._out is not sys.stderr:
            self._out.close()


def now() -> float:
    return time.time()
