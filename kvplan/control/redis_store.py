"""The shared flag store: Redis, for several router replicas.

Writes: one Lua script (lua/write.lua) merges the change into the stored record, bumps the
version, and appends one entry to a stream that is both the audit trail and the notification.
Reads: every process keeps its last known snapshot and follows the stream with XREAD BLOCK from
the last id it saw (plain pub/sub drops messages across reconnects; a stream resumes), plus a
full resync every `resync_s` and after every reconnect. An epoch stored with the state changes
whenever Redis lost its data, so a version counter that restarted is not taken for an old one.

While Redis is away the snapshot stays as it was: traffic is routed on the last known state.
A process that never loaded state routes on the plan's defaults.

Re-seed rule (Redis came back empty): the first process allowed to (`Seeding`) that notices
writes a new epoch seeded with the state it holds — the last writer's state as it propagated to
that process — or, for a router that never loaded any state, the plan's defaults. Everyone else
adopts that epoch. One-shot commands never seed: they refuse with EmptyStore until a router has.

A write whose connection drops is retried once, after the stream says whether the dropped
attempt was applied (its reply can be lost after the script ran): every write carries an id the
writer chose, stored in its stream entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from importlib import resources
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from kvplan.control.metrics import SourceStats, track
from kvplan.control.state import (
    AuditEntry,
    BucketFlags,
    EmptyStore,
    FlagChange,
    FlagSnapshot,
    Seeding,
    StoreUnavailable,
    StoreWrites,
    WriteConflict,
    check_history_limit,
    check_write,
    defaults_from_plan,
    flags_from_record,
    flags_to_record,
    merge,
    unknown_bucket,
)
from kvplan.plan import Plan

log = logging.getLogger("kvplan.control")

_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
STREAM_MAXLEN = 100_000  # audit entries kept (approximate trim)
WRITE_LOOKBACK = 200  # newest stream entries searched for a write whose reply was lost


def _lua(name: str) -> str:
    return resources.files("kvplan.control").joinpath("lua", name).read_text()


def redacted(url: str) -> str:
    """The URL without a password, for messages and metric labels."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _new_epoch() -> str:
    return f"{int(time.time())}-{uuid.uuid4().hex[:8]}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisFlagStore(StoreWrites):
    def __init__(
        self,
        url: str,
        plan: Plan,
        *,
        prefix: str = "kvplan:",
        resync_s: float = 5.0,
        block_ms: int = 500,
        label: str | None = None,
        require_at_start: bool = True,
        actor: str = "kvplan",
        seeding: Seeding = Seeding.DEFAULTS,
    ) -> None:
        self.url = url
        self._plan_defaults = defaults_from_plan(plan)
        self._state_key = f"{prefix}state"
        self._stream_key = f"{prefix}changes"
        self._resync_s = resync_s
        self._block_ms = block_ms
        self._require = require_at_start
        self._actor = actor
        self._seeding = seeding
        self._snap = FlagSnapshot(self._plan_defaults, version=0, epoch="", source="plan")
        self._last_id = "0-0"
        self._last_resync = 0.0
        self._follower: asyncio.Task[None] | None = None
        self._closing = False
        # propagation trace for tests and benchmarks: one "version epoch unix_time" line per change
        trace = os.environ.get("KVPLAN_FLAG_TRACE")
        self._trace = open(trace, "a", buffering=1) if trace else None  # noqa: SIM115
        self.stats = SourceStats(label or redacted(url))
        track(self)
        # Two connections: the follower blocks in XREAD on its own, writes never wait behind it.
        self._cmd = aioredis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self._sub = aioredis.from_url(
            url, socket_connect_timeout=2, socket_timeout=block_ms / 1000 + 5, client_name="kvplan-follower"
        )
        self._write = self._cmd.register_script(_lua("write.lua"))
        self._sync = self._cmd.register_script(_lua("sync.lua"))
        self._sub_sync = self._sub.register_script(_lua("sync.lua"))

    # reading ---------------------------------------------------------------------------------

    def snapshot(self) -> FlagSnapshot:
        return self._snap

    @property
    def state_age(self) -> float:
        """Seconds since Redis last confirmed the state (also exported as a metric)."""
        return time.monotonic() - self.stats.confirmed_at

    # lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._resync(self._cmd, "startup")
        except _DOWN as exc:
            self.stats.up = False
            if self._require:
                raise StoreUnavailable(f"cannot reach the flag store at {redacted(self.url)}: {exc}") from exc
            log.warning("flag store %s unreachable; routing on plan defaults until it answers", self.url)
        except RedisError as exc:
            raise StoreUnavailable(f"flag store at {redacted(self.url)} refused: {exc}") from exc
        self._follower = asyncio.create_task(self._follow(), name=f"kvplan-flags-{self.stats.label}")

    async def close(self) -> None:
        self._closing = True
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._follower, 2.0)
            self._follower = None
        await self._sub.aclose()
        await self._cmd.aclose()
        if self._trace is not None:
            self._trace.close()

    # propagation -----------------------------------------------------------------------------

    async def _follow(self) -> None:
        """XREAD from the last id; resync periodically and after every reconnect."""
        backoff = 0.05
        need: str | None = None
        while not self._closing:
            try:
                if need is not None or time.monotonic() - self._last_resync >= self._resync_s:
                    await self._resync(self._sub, need or "periodic")
                    need = None
                reply: Any = await self._sub.xread(
                    {self._stream_key: self._last_id}, block=self._block_ms, count=500
                )
                self._confirm()
                backoff = 0.05
                for _stream, entries in reply or []:
                    for entry_id, fields in entries:
                        need = self._apply_entry(_text(entry_id), fields) or need
            except asyncio.CancelledError:
                raise
            except _DOWN:
                self.stats.up = False
                need = "reconnect"
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.2)  # bounded: a restarted Redis is picked up within ~0.2 s
            except (RedisError, EmptyStore) as exc:  # LOADING while Redis reads its dump; empty
                log.warning("flag store %s: %s", self.stats.label, exc)
                self.stats.up = False
                need = need or "reconnect"
                await asyncio.sleep(0.1)

    def _confirm(self) -> None:
        self.stats.up = True
        self.stats.confirmed_at = time.monotonic()

    def _apply_entry(self, entry_id: str, fields: Mapping[Any, Any]) -> str | None:
        """Apply one stream entry; return a resync reason when it cannot be applied in order."""
        f = {_text(k): _text(v) for k, v in fields.items()}
        self._last_id = entry_id
        version = int(f["v"])
        if f["epoch"] != self._snap.epoch:
            return "epoch"
        if version <= self._snap.version:
            return None  # already applied (our own write, or a replay)
        if version != self._snap.version + 1:
            return "gap"
        self._install(self._snap.epoch, version, {f["bucket"]: flags_from_record(json.loads(f["after"]))})
        self.stats.updates += 1
        return None

    def _install(
        self, epoch: str, version: int, changed: Mapping[str, BucketFlags], whole: bool = False
    ) -> None:
        buckets = dict(changed) if whole else {**self._snap.buckets, **changed}
        if epoch != self._snap.epoch and self._snap.epoch:
            self.stats.epoch_changes += 1
        self._snap = FlagSnapshot(buckets, version=version, epoch=epoch, source="redis")
        self.stats.loaded = True
        self.stats.version = version
        if self._trace is not None:
            self._trace.write(f"{version} {epoch} {time.time():.6f}\n")

    def _seed(self) -> Mapping[str, BucketFlags]:
        """What this process writes into an empty Redis: nothing unless `Seeding` allows it."""
        if self._seeding is Seeding.NEVER:
            return {}
        if self._snap.source == "redis":
            return self._snap.buckets
        return self._plan_defaults if self._seeding is Seeding.DEFAULTS else {}

    async def _resync(self, conn: aioredis.Redis, reason: str) -> None:
        seed = self._seed()
        args: list[Any] = [_new_epoch(), self._actor, time.time(), STREAM_MAXLEN]
        for name, flags in seed.items():
            args += [name, json.dumps(flags_to_record(flags))]
        run = self._sync if conn is self._cmd else self._sub_sync
        seeded, last_id, flat = await run(keys=[self._state_key, self._stream_key], args=args)
        self._confirm()
        self._last_resync = time.monotonic()
        self.stats.resynced(reason)
        if seeded:
            log.warning("flag store %s was empty: seeded a new epoch", self.stats.label)
        pairs = dict(zip(flat[::2], flat[1::2], strict=True))
        state = {_text(k): _text(v) for k, v in pairs.items()}
        if "_epoch" not in state:
            raise EmptyStore(
                f"the flag store at {redacted(self.url)} holds no state (Redis restarted empty, or no "
                "router started yet): a router seeds it, with its last known state after a restart; "
                "nothing was read or written, retry shortly"
            )
        stored = {k[2:]: flags_from_record(json.loads(v)) for k, v in state.items() if k.startswith("b:")}
        order = [*self._plan_defaults, *(k for k in stored if k not in self._plan_defaults)]
        buckets = {k: stored[k] for k in order if k in stored}  # the plan's order, not the hash's
        epoch, version = state["_epoch"], int(state["_version"])
        self._last_id = _text(last_id)
        if epoch != self._snap.epoch or version != self._snap.version or self._snap.source != "redis":
            self._install(epoch, version, buckets, whole=True)

    # writing ---------------------------------------------------------------------------------

    async def update(
        self,
        bucket: str,
        change: FlagChange,
        *,
        action: str,
        actor: str,
        reason: str = "",
        expect: FlagChange | None = None,
        write_id: str = "",
    ) -> BucketFlags:
        check_write(actor, reason, write_id)
        if bucket not in self._plan_defaults:
            raise unknown_bucket(bucket, self._plan_defaults)
        rec = change.record()
        exp = json.dumps(expect.record()) if expect else ""
        wid = write_id or uuid.uuid4().hex
        args: list[Any] = [
            bucket,
            json.dumps(rec),
            exp,
            actor,
            action,
            reason,
            time.time(),
            STREAM_MAXLEN,
            wid,
        ]
        reply, retried = await self._send(args, wid)
        status = _text(reply[0])
        if status == "unknown":
            raise unknown_bucket(bucket, self._plan_defaults)
        # A conflict on the retry, with the change already in place, is the dropped attempt's own
        # write (or an equal one): the change holds, so it is not reported as lost.
        if status == "conflict" and not (retried and merge(json.loads(_text(reply[1])), rec) is None):
            raise WriteConflict(f"bucket {bucket!r} changed meanwhile ({_text(reply[2])} differs)")
        after = flags_from_record(json.loads(_text(reply[1])))
        if status == "ok":
            version, epoch = int(_text(reply[2])), _text(reply[3])
            # read-your-writes: apply locally now if it is the next version, else let the stream do it
            if epoch == self._snap.epoch and version == self._snap.version + 1:
                self._install(epoch, version, {bucket: after})
        return after

    async def _write_once(self, args: list[Any]) -> Any:
        keys = [self._state_key, self._stream_key]
        reply = await self._write(keys=keys, args=args)
        if _text(reply[0]) == "nostate":  # Redis lost its data: re-seed (if this process may), then write
            await self._resync(self._cmd, "epoch")
            reply = await self._write(keys=keys, args=args)
        return reply

    async def _send(self, args: list[Any], wid: str) -> tuple[Any, bool]:
        """The script's reply, and whether it came from a second attempt. A dropped connection
        (idle timeout, CLIENT KILL, restart) fails the first command sent on it: retry once, unless
        the stream shows the first attempt ran."""
        try:
            return await self._write_once(args), False
        except _DOWN as exc:
            log.info("flag store %s: write failed (%s), checking and retrying once", self.stats.label, exc)
        try:
            applied = await self._find_write(wid)
            return (applied, False) if applied is not None else (await self._write_once(args), True)
        except _DOWN as exc:
            raise StoreUnavailable(
                f"cannot reach the flag store at {redacted(self.url)}: {exc}; the write was not confirmed "
                "(`kvplan flags history` shows whether it was applied)"
            ) from exc

    async def _find_write(self, wid: str) -> list[str] | None:
        """A reply like the script's 'ok' for the write `wid`, when the stream holds it."""
        rows: Any = await self._cmd.xrevrange(self._stream_key, count=WRITE_LOOKBACK)
        for entry_id, fields in rows:
            f = {_text(k): _text(v) for k, v in fields.items()}
            if f.get("wid") == wid:
                return ["ok", f["after"], f["v"], f["epoch"], _text(entry_id)]
        return None

    async def history(self, bucket: str | None = None, limit: int = 100) -> list[AuditEntry]:
        check_history_limit(limit)
        try:
            try:
                out = await self._history(bucket, limit)
            except _DOWN:  # a dropped idle connection fails the first command: a read retries once
                out = await self._history(bucket, limit)
        except _DOWN as exc:
            raise StoreUnavailable(f"cannot reach the flag store at {redacted(self.url)}: {exc}") from exc
        return list(reversed(out[:limit]))

    async def _history(self, bucket: str | None, limit: int) -> list[AuditEntry]:
        out: list[AuditEntry] = []
        end = "+"
        while len(out) < limit:
            rows: Any = await self._cmd.xrevrange(self._stream_key, max=end, min="-", count=500)
            for entry_id, fields in rows:
                f = {_text(k): _text(v) for k, v in fields.items()}
                if bucket is None or f["bucket"] == bucket:
                    out.append(_audit(f))
                end = "(" + _text(entry_id)
            if len(rows) < 500:
                break
        return out


def _audit(f: Mapping[str, str]) -> AuditEntry:
    return AuditEntry(
        version=int(f["v"]),
        bucket=f["bucket"],
        actor=f["actor"],
        action=f["action"],
        before=flags_from_record(json.loads(f["before"])) if f["before"] else None,
        after=flags_from_record(json.loads(f["after"])),
        reason=f["reason"],
        at=float(f["at"]),
        epoch=f["epoch"],
        write_id=f.get("wid", ""),
    )
