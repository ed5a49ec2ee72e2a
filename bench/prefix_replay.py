"""Prefix-cache routing on a real trace: the Mooncake conversation trace replayed through routers
to simulated vLLM workers with prefix caching on, every policy against the same workers, one run.

The trace (data/traces/mooncake-trace-2025, Apache-2.0) gives each request's arrival, prompt and
output length and `hash_ids`: one id per 512-token block of the prompt, equal ids meaning a shared
prefix. Each id becomes 512 fixed pseudo-words (" ab", two letters: one token for the simulated
worker's tokenizer, three bytes for kvplan's token estimate), so requests that share leading ids
share their leading text token for token. A conversation sample (every k-th conversation, keyed
by its first own block) keeps the multi-turn structure; arrivals are the trace's own, divided by
the time scale.

Policies, each on freshly started workers (cold caches): kvplan serve with prefix-cache,
power-of-two and round-robin; vllm-router with cache_aware; an oracle that asks every worker's
/debug/prefix_cache/lookup and sends to the longest cached prefix (least in flight among equals).
Hit rate = vllm:prefix_cache_hits / vllm:prefix_cache_queries summed over the workers (prompt
tokens served from cache / prompt tokens). Goodput = requests with TTFT <= 2 s and mean ITL <=
150 ms per second of the arrival span. Sections: hits (all policies), sweep (prefix-cache vs P2C
over loads), skew (one hot prefix taking 30% of requests), overhead (bench/router_bench.py
--policy-overhead), table (100k requests through the policy object alone: table size and bytes).

    .venv/bin/python bench/prefix_replay.py  # all sections: bench/results/prefix_replay.{json,md}
    .venv/bin/python bench/prefix_replay.py --sections hits --requests 60 --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import string
import subprocess
import sys
import tempfile
import time
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tests/support: the router as a process, waiting

TRACE = ROOT / "data" / "traces" / "mooncake-trace-2025" / "conversation.jsonl"
TRACE_BLOCK = 512  # tokens per hash_id in the Mooncake traces
MODEL = "replay-model"
SLO_TTFT = 2.0
SLO_ITL = 0.150
ATTAINMENT = 0.9  # a policy "misses the SLO" at a load where fewer requests than this meet it
HOT_SHARE = 0.3
HOT_BLOCKS = 8  # the hot prefix: 8 trace blocks (4096 tokens)
HOT_BASE = 10**9  # hash ids of the hot prefix, beyond the trace's
POLICIES = ("prefix-cache", "power-of-two", "round-robin", "vllm-router", "oracle")
KVPLAN_POLICIES = ("prefix-cache", "power-of-two", "round-robin")
IN_FLIGHT = 32  # table replay: requests in flight at once
SECTIONS = ("hits", "sweep", "skew", "overhead", "table")

# two lower-case letters: with its leading space one piece of the simulated worker's tokenizer
# (kvplan.workers.sim.text) and exactly the 3 bytes kvplan's router estimates per token
WORDS = tuple(a + b for a in string.ascii_lowercase for b in string.ascii_lowercase)
WORD_CHARS = 3


@dataclass(frozen=True)
class TraceRequest:
    at: float  # seconds after the first request, trace time
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]


def load_trace(path: Path, sample: int, limit: int, max_tokens: int, output_cap: int) -> list[TraceRequest]:
    """Every `sample`-th conversation (by a hash of its first own block), requests that fit in
    `max_tokens` with their capped output, the first `limit` of them in arrival order."""
    out: list[TraceRequest] = []
    with path.open() as f:
        for line in f:
            row = json.loads(line)
            ids = tuple(row["hash_ids"])
            key = ids[1] if len(ids) > 1 else ids[0]
            if zlib.crc32(str(key).encode()) % sample:
                continue
            if row["input_length"] + min(row["output_length"], output_cap) + 1 > max_tokens:
                continue
            out.append(TraceRequest(row["timestamp"] / 1000, row["input_length"], row["output_length"], ids))
            if len(out) == limit:
                break
    if out:
        t0 = out[0].at
        out = [replace(r, at=r.at - t0) for r in out]
    return out


def skewed(requests: Sequence[TraceRequest], share: float, seed: int = 7) -> list[TraceRequest]:
    """The same requests, `share` of them (at random) starting with one hot prefix of
    HOT_BLOCKS blocks (their own blocks after it, same lengths)."""
    rng = random.Random(seed)
    out = []
    for r in requests:
        if rng.random() < share:
            hot = min(HOT_BLOCKS, len(r.hash_ids))
            r = replace(r, hash_ids=tuple(HOT_BASE + i for i in range(hot)) + r.hash_ids[hot:])
        out.append(r)
    return out


class PromptBuilder:
    """Trace blocks to text: block `h` is always the same TRACE_BLOCK words, so equal leading
    hash ids are equal leading tokens (and every shorter common prefix of blocks too)."""

    def __init__(self) -> None:
        self._blocks: dict[int, str] = {}

    def block(self, hash_id: int) -> str:
        text = self._blocks.get(hash_id)
        if text is None:
            rng = random.Random(hash_id)
            text = "".join(" " + w for w in rng.choices(WORDS, k=TRACE_BLOCK))
            self._blocks[hash_id] = text
        return text

    def prompt(self, hash_ids: Sequence[int], input_length: int) -> str:
        """`input_length` tokens: the ids' blocks in order, the last one cut (a trace request's
        last block is partial); beyond the ids' blocks, nothing is invented."""
        text = "".join(self.block(h) for h in hash_ids)
        return text[: input_length * WORD_CHARS]


# -- processes --------------------------------------------------------------------------------


def sim_args(args: argparse.Namespace, index: int) -> list[str]:
    return [
        "--model", args.model, "--gpu", args.gpu, "--served-model-name", MODEL,
        "--max-model-len", str(args.max_model_len), "--seed", str(index),
        "--max-num-batched-tokens", str(args.max_num_batched_tokens),
        *(["--num-blocks", str(args.num_blocks)] if args.num_blocks else []),
    ]  # fmt: skip


@contextlib.contextmanager
def workers(args: argparse.Namespace) -> Iterator[list[str]]:
    from kvplan.workers.sim.launch import sim_worker_process

    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(sim_worker_process(sim_args(args, i))) for i in range(args.workers)]


def kvplan_plan(urls: list[str], policy: str, max_model_len: int, load_bound: float | None) -> dict[str, Any]:
    choice: dict[str, Any] = {"policy": policy}
    if policy == "prefix-cache" and load_bound is not None:
        choice["load_bound"] = load_bound
    return {
        "buckets": [
            {
                "name": "all",
                "max_tokens": max_model_len,
                "endpoint_choice": choice,
                "baseline": {
                    "name": "pool",
                    "model": MODEL,
                    "kv_format": "bf16",
                    "max_model_len": max_model_len,
                    "endpoints": urls,
                },
            }
        ]
    }


@contextlib.contextmanager
def router(args: argparse.Namespace, policy: str, urls: list[str], tmp: Path) -> Iterator[str | None]:
    """The URL requests go to (None: the oracle, straight to the workers)."""
    if policy == "oracle":
        yield None
        return
    if policy == "vllm-router":
        yield from _vllm_router(urls, tmp)
        return
    from support.router import RouterProcess

    plan = tmp / f"plan-{policy}.json"  # JSON is YAML
    plan.write_text(json.dumps(kvplan_plan(urls, policy, args.max_model_len, args.load_bound)))
    proc = RouterProcess(plan, "--log-level", "warning", "--max-in-flight", "1024")
    try:
        wait_scraped(proc.metrics_url, len(urls))
        yield proc.url
    finally:
        proc.stop()


def wait_scraped(metrics_url: str, n: int) -> None:
    """Until the router has scraped every worker once (the block size comes with the scrape)."""
    import httpx
    from support.waiting import poll

    from kvplan.metric_names import router as rm

    def scraped() -> bool:
        text = httpx.get(f"{metrics_url}/metrics", timeout=2).text
        fresh = [ln for ln in text.splitlines() if ln.startswith(rm.ENDPOINT_SATURATED + "{")]
        return len(fresh) == n and all(ln.endswith(" 0.0") for ln in fresh)

    poll(scraped, 30, "the router's first scrape of every worker", interval=0.1)


def _vllm_router(urls: list[str], tmp: Path) -> Iterator[str]:
    from support.procs import stop
    from support.waiting import poll

    from kvplan.procs import free_port

    exe = Path(sys.executable).parent / "vllm-router"
    if not exe.exists():
        raise SystemExit("error: vllm-router is not installed (make setup-bench)")
    port = free_port()
    cmd = [str(exe), "--worker-urls", *urls, "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--policy", "cache_aware", "--log-level", "warning", "--prometheus-port", str(free_port())]
    with (tmp / "vllm-router.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        import httpx

        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        poll(healthy, 60, "vllm-router to answer /health", interval=0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)  # type: ignore[arg-type]


# -- replay -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    ok: bool
    ttft: float = float("inf")
    itl: float = float("inf")  # mean inter-token latency of the request
    tokens: int = 0

    @property
    def met(self) -> bool:
        return self.ok and self.ttft <= SLO_TTFT and self.itl <= SLO_ITL


class Oracle:
    """The worker whose prefix cache holds the longest leading part of the prompt right now."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.in_flight = dict.fromkeys(urls, 0)

    async def pick(self, client: Any, body: dict[str, Any]) -> str:
        query = {"model": MODEL, "prompt": body["prompt"]}
        answers = await asyncio.gather(
            *(client.post(f"{u}/debug/prefix_cache/lookup", json=query) for u in self.urls)
        )
        cached = [a.json()["cached_tokens"] for a in answers]
        return max(self.urls, key=lambda u: (cached[self.urls.index(u)], -self.in_flight[u]))


async def _send(client: Any, url: str, body: dict[str, Any]) -> Outcome:
    t0 = time.perf_counter()
    first = last = 0.0
    tokens = 0
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                return Outcome(False)
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                if '"error"' in line[:16]:
                    return Outcome(False)
                last = time.perf_counter()
                if not tokens:
                    first = last
                tokens += 1
    except Exception:  # a dropped connection is a failed request, counted, not a crash
        return Outcome(False)
    if not tokens:
        return Outcome(False)
    itl = (last - first) / (tokens - 1) if tokens > 1 else 0.0
    return Outcome(True, first - t0, itl, tokens)


async def replay(
    requests: Sequence[TraceRequest], scale: float, output_cap: int, target: str | None, urls: list[str]
) -> list[Outcome]:
    import httpx

    builder = PromptBuilder()
    bodies = [
        {
            "model": MODEL,
            "prompt": builder.prompt(r.hash_ids, r.input_length),
            "max_tokens": max(1, min(r.output_length, output_cap)),
            "ignore_eos": True,
            "stream": True,
        }
        for r in requests
    ]
    oracle = Oracle(urls) if target is None else None
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=512)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        start = time.perf_counter()

        async def one(r: TraceRequest, body: dict[str, Any]) -> Outcome:
            delay = start + r.at / scale - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # the trace's own arrival time, scaled
            if oracle is None:
                assert target is not None
                return await _send(client, target, body)
            url = await oracle.pick(client, body)  # its lookups are not counted in TTFT
            oracle.in_flight[url] += 1
            try:
                out = await _send(client, url, body)
            finally:
                oracle.in_flight[url] -= 1
            return out

        return list(await asyncio.gather(*(one(r, b) for r, b in zip(requests, bodies, strict=True))))


def worker_counters(urls: list[str]) -> list[dict[str, float]]:
    """vllm:prefix_cache_queries / _hits (and requests) as each worker's /metrics reports them."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from kvplan.metric_names import vllm

    wanted = {vllm.PREFIX_CACHE_QUERIES: "queries", vllm.PREFIX_CACHE_HITS: "hits"}
    out = []
    for url in urls:
        found = {"queries": 0.0, "hits": 0.0}
        for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text):
            key = wanted.get(family.name)
            if key:
                found[key] = sum(s.value for s in family.samples if s.name.endswith("_total"))
        out.append(found)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_policy(
    args: argparse.Namespace, policy: str, requests: Sequence[TraceRequest], scale: float, tmp: Path
) -> dict[str, Any]:
    with workers(args) as urls, router(args, policy, urls, tmp) as target:
        wall0 = time.perf_counter()
        outcomes = asyncio.run(replay(requests, scale, args.output_cap, target, urls))
        wall = time.perf_counter() - wall0
        counters = worker_counters(urls)
    span = max(requests[-1].at / scale, 1e-9)
    ok = [o for o in outcomes if o.ok]
    queries = sum(c["queries"] for c in counters)
    hits = sum(c["hits"] for c in counters)
    result = {
        "policy": policy,
        "time_scale": scale,
        "requests": len(outcomes),
        "offered_rps": len(outcomes) / span,
        "failed": len(outcomes) - len(ok),
        "hit_rate": hits / queries if queries else float("nan"),
        "prompt_token_share": [round(c["queries"] / queries, 3) if queries else 0.0 for c in counters],
        "ttft_p50_s": percentile([o.ttft for o in ok], 0.5),
        "ttft_p99_s": percentile([o.ttft for o in ok], 0.99),
        "itl_p50_ms": percentile([o.itl for o in ok], 0.5) * 1e3,
        "itl_p99_ms": percentile([o.itl for o in ok], 0.99) * 1e3,
        "slo_attainment": sum(o.met for o in outcomes) / len(outcomes),
        "goodput_rps": sum(o.met for o in outcomes) / span,
        "wall_s": wall,
    }
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}), flush=True)
    return result


# -- the policy object alone ------------------------------------------------------------------


def deep_bytes(table: Any) -> int:
    """Bytes of a PrefixTable's containers and the keys and masks in them (sys.getsizeof)."""
    seen: set[int] = set()
    total = 0
    for obj in (table._holders, table._blocks, table._bit):
        total += sys.getsizeof(obj)
    for key, mask in table._holders.items():
        for x in (key, mask):
            if id(x) not in seen:
                seen.add(id(x))
                total += sys.getsizeof(x)
    for blocks in table._blocks.values():
        total += sys.getsizeof(blocks)  # its keys are the holders' keys (same int objects or equal)
    return total


def table_replay(args: argparse.Namespace) -> dict[str, Any]:
    """`args.table_requests` requests of the whole trace (repeated with fresh ids each pass, so
    the table keeps meeting new prompts) through PrefixCachePolicy.select with the plan's
    default table size, 4 endpoints, IN_FLIGHT requests in flight (the oldest finishing as the
    next one starts, so load moves and spreads prefixes); table entries and bytes."""
    from kvplan.plan import PREFIX_LOAD_BOUND, PREFIX_TABLE_BLOCKS
    from kvplan.router.endpoint_policy import Pick
    from kvplan.router.endpoint_policy.power_of_two import PowerOfTwoPolicy
    from kvplan.router.endpoint_policy.prefix_cache import PrefixCachePolicy
    from kvplan.router.endpoints import Endpoint, Saturation
    from kvplan.router.tokens import completion_prompt

    trace = load_trace(TRACE, 1, 10**9, 10**9, 0)
    builder = PromptBuilder()
    eps = [Endpoint("p", f"http://127.0.0.1:{9000 + i}", 256) for i in range(4)]
    now, sat = 1000.0, Saturation()
    for e in eps:
        e.scraped_at, e.block_size = now, 16
    prefix = PrefixCachePolicy(PREFIX_LOAD_BOUND, PREFIX_TABLE_BLOCKS, random.Random(0))
    p2c = PowerOfTwoPolicy(random.Random(0))
    counter = _Estimate()
    samples: list[dict[str, float]] = []
    in_flight: deque[Endpoint] = deque()
    select_s = {"prefix-cache": 0.0, "power-of-two": 0.0}
    n = args.table_requests
    step = max(1, n // 10)
    for i in range(n):
        r = trace[i % len(trace)]
        offset = (i // len(trace)) * 10**8  # pass k: other ids, other prompts
        tokens = completion_prompt(counter, builder.prompt([h + offset for h in r.hash_ids], r.input_length))
        pick = Pick(tokens, now, sat)
        t0 = time.perf_counter()
        p2c.select(eps, pick)
        t1 = time.perf_counter()
        choice = prefix.select(eps, pick)
        t2 = time.perf_counter()
        select_s["power-of-two"] += t1 - t0
        select_s["prefix-cache"] += t2 - t1
        assert choice is not None
        choice.endpoint.in_flight += 1
        in_flight.append(choice.endpoint)
        if len(in_flight) > IN_FLIGHT:  # the oldest request finishes
            in_flight.popleft().in_flight -= 1
        if (i + 1) % step == 0:
            samples.append(
                {"requests": i + 1, "entries": prefix.table_size(), "bytes": deep_bytes(prefix.table)}
            )
        if (i + 1) % len(trace) == 0:
            builder = PromptBuilder()  # its cache of block texts, not the table, is dropped
    result = {
        "requests": n,
        "endpoints": len(eps),
        "table_blocks_bound": PREFIX_TABLE_BLOCKS,
        "samples": samples,
        "max_entries": max(s["entries"] for s in samples),
        "max_bytes": max(s["bytes"] for s in samples),
        "bytes_per_entry_end": samples[-1]["bytes"] / max(samples[-1]["entries"], 1),
        "select_us_per_request": {k: v / n * 1e6 for k, v in select_s.items()},
    }
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}), flush=True)
    return result


class _Estimate:
    """kvplan's token estimate (3 bytes a token), without importing the router at module level."""

    unit = 3

    def encode(self, text: str) -> bytes:
        return text.encode()


# -- sections ---------------------------------------------------------------------------------


def overhead(args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(ROOT / "bench" / "router_bench.py"), "--policy-overhead"]
    cmd += ["--rounds", str(args.overhead_rounds)]
    run = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    result: dict[str, Any] = json.loads(run.stdout)
    print(json.dumps(result), flush=True)
    return result


def check_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad arguments with one usage line (exit 2) before a worker or router starts."""
    from kvplan.errors import NotFound
    from kvplan.planner.gpus import get_gpu
    from kvplan.planner.models import get_model

    if unknown := [p for p in args.policies.split(",") if p not in POLICIES]:
        ap.error(f"--policies: unknown {', '.join(unknown)} (choose from {', '.join(POLICIES)})")
    for flag in ("workers", "sample", "requests", "output_cap", "max_model_len", "max_num_batched_tokens",
                 "table_requests", "overhead_rounds", "time_scale", "skew_load"):  # fmt: skip
        if not getattr(args, flag) > 0:
            ap.error(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if args.num_blocks < 0 or (args.load_bound is not None and not args.load_bound >= 0):
        ap.error("--num-blocks and --load-bound must not be negative")
    try:
        if not all(float(x) > 0 for x in args.sweep.split(",")):
            raise ValueError
    except ValueError:
        ap.error(f"--sweep takes positive load multipliers separated by commas, got {args.sweep!r}")
    try:
        get_model(args.model)
        get_gpu(args.gpu)
    except NotFound as exc:
        ap.error(str(exc))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated of {', '.join(SECTIONS)}"
    )
    ap.add_argument("--policies", default=",".join(POLICIES), help="for the hits section")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--sample", type=int, default=40, help="keep every k-th conversation")
    ap.add_argument("--requests", type=int, default=160, help="first N requests of the sample")
    ap.add_argument("--time-scale", type=float, default=40.0, help="trace seconds per replay second")
    ap.add_argument(
        "--sweep", default="1,2,3,4", help="load multipliers of --time-scale for the goodput sweep"
    )
    ap.add_argument("--skew-load", type=float, default=2.0, help="load multiplier of the skewed run")
    ap.add_argument("--output-cap", type=int, default=48, help="output tokens at most (the trace's, capped)")
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--gpu", default="h100")
    ap.add_argument("--max-model-len", type=int, default=32768)
    ap.add_argument("--max-num-batched-tokens", type=int, default=2048)
    ap.add_argument("--num-blocks", type=int, default=0, help="KV blocks per worker (0: the planner's)")
    ap.add_argument("--load-bound", type=float, default=None, help="prefix-cache load_bound (plan default)")
    ap.add_argument("--table-requests", type=int, default=100_000)
    ap.add_argument("--overhead-rounds", type=int, default=5)
    ap.add_argument("--no-write", action="store_true", help="print only, no result files")
    args = ap.parse_args()
    sections = [s for s in args.sections.split(",") if s]
    if unknown := [s for s in sections if s not in SECTIONS]:
        ap.error(f"--sections: unknown {', '.join(unknown)} (choose from {', '.join(SECTIONS)})")
    check_args(ap, args)

    requests = load_trace(TRACE, args.sample, args.requests, args.max_model_len, args.output_cap)
    argv = " ".join([".venv/bin/python", "bench/prefix_replay.py", *sys.argv[1:]])
    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": f"2-core CPU machine ({os.cpu_count()} CPUs visible, shared), loopback",
        "command": argv,
        "setup": {
            k: getattr(args, k)
            for k in ("workers", "sample", "requests", "time_scale", "output_cap", "model", "gpu")
        }
        | {
            "max_model_len": args.max_model_len,
            "max_num_batched_tokens": args.max_num_batched_tokens,
            "trace_span_s": requests[-1].at,
            "mean_input_tokens": statistics.fmean(r.input_length for r in requests),
            "ideal_hit_rate": ideal_hit_rate(requests),
        },
    }
    tmp = Path(tempfile.mkdtemp(prefix="prefix-replay-"))
    if "hits" in sections:
        policies = args.policies.split(",")
        result["hits"] = [run_policy(args, p, requests, args.time_scale, tmp) for p in policies]
    if "sweep" in sections:
        done = {(x["policy"], x["time_scale"]): x for x in result.get("hits", [])}  # the same runs
        result["sweep"] = [
            done.get((p, args.time_scale * m)) or run_policy(args, p, requests, args.time_scale * m, tmp)
            for m in (float(x) for x in args.sweep.split(","))
            for p in ("prefix-cache", "power-of-two")
        ]
    if "skew" in sections:
        hot = skewed(requests, HOT_SHARE)
        scale = args.time_scale * args.skew_load
        result["skew"] = [run_policy(args, p, hot, scale, tmp) for p in ("prefix-cache", "power-of-two")]
    if "overhead" in sections:
        result["overhead"] = overhead(args)
    if "table" in sections:
        result["table"] = table_replay(args)
    result["targets"] = targets(result)
    print(json.dumps(result["targets"], indent=2))
    if not args.no_write:
        write(result)


def ideal_hit_rate(requests: Sequence[TraceRequest]) -> float:
    """One replica with an unbounded cache: the share of prompt tokens in blocks seen before."""
    seen: set[int] = set()
    hit = total = 0
    for r in requests:
        k = 0
        for h in r.hash_ids:
            if h not in seen:
                break
            k += 1
        hit += min(k * TRACE_BLOCK, r.input_length)
        total += r.input_length
        seen.update(r.hash_ids)
    return hit / total


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if "hits" in r:
        by = {x["policy"]: x for x in r["hits"]}
        mine, oracle, vr = (
            by["prefix-cache"]["hit_rate"],
            by["oracle"]["hit_rate"],
            by["vllm-router"]["hit_rate"],
        )
        out.append(
            {
                "target": "hit rate >= 0.9x the oracle's",
                "measured": f"{mine:.3f} vs oracle {oracle:.3f} ({mine / oracle:.2f}x)",
                "met": mine >= 0.9 * oracle,
            }
        )
        out.append(
            {
                "target": "hit rate >= vllm-router cache_aware's",
                "measured": f"{mine:.3f} vs {vr:.3f}",
                "met": mine >= vr,
            }
        )
    if "sweep" in r:
        runs = sorted(r["sweep"], key=lambda x: x["time_scale"])
        p2c = [x for x in runs if x["policy"] == "power-of-two"]
        miss = next((x for x in p2c if x["slo_attainment"] < ATTAINMENT), None)
        if miss is None:
            out.append(
                {
                    "target": "goodput >= 1.3x P2C where P2C first misses the SLO",
                    "measured": "P2C met the SLO at every load of the sweep: no load to compare at",
                    "met": False,
                }
            )
        else:
            mine = next(
                x for x in runs if x["policy"] == "prefix-cache" and x["time_scale"] == miss["time_scale"]
            )
            ratio = mine["goodput_rps"] / miss["goodput_rps"] if miss["goodput_rps"] else float("inf")
            out.append(
                {
                    "target": "goodput >= 1.3x P2C where P2C first misses the SLO",
                    "measured": f"at {miss['offered_rps']:.2f} req/s: {mine['goodput_rps']:.2f} vs "
                    f"{miss['goodput_rps']:.2f} req/s ({ratio:.2f}x)",
                    "met": ratio >= 1.3,
                }
            )
    if "skew" in r:
        by = {x["policy"]: x for x in r["skew"]}
        mine, p2c = by["prefix-cache"]["ttft_p99_s"], by["power-of-two"]["ttft_p99_s"]
        out.append(
            {
                "target": "TTFT p99 under the skewed trace no worse than P2C",
                "measured": f"{mine:.2f} s vs {p2c:.2f} s",
                "met": mine <= p2c,
            }
        )
    if "overhead" in r:
        o = r["overhead"]
        out.append(
            {
                "target": "added latency p50 within +0.05 ms of P2C (router_bench)",
                "measured": f"{o['p50_ms_prefix_minus_p2c']:+.3f} ms (c=1, median of rounds)",
                "met": o["p50_ms_prefix_minus_p2c"] <= 0.05,
            }
        )
    if "table" in r:
        t = r["table"]
        out.append(
            {
                "target": f"table memory bounded over {t['requests']} requests",
                "measured": f"max {t['max_entries']} entries (bound {t['table_blocks_bound']}), "
                f"max {t['max_bytes'] / 2**20:.1f} MiB",
                "met": t["max_entries"] <= t["table_blocks_bound"],
            }
        )
    return out


def write(r: dict[str, Any]) -> None:
    out = ROOT / "bench" / "results"
    (out / "prefix_replay.json").write_text(json.dumps(r, indent=2) + "\n")
    s = r["setup"]
    lines = [
        f"# Prefix-cache routing on the Mooncake trace, {r['date']}",
        "",
        f"- device: {r['device']}",
        f"- command: `{r['command']}`",
        f"- workload: Mooncake conversation trace, every {s['sample']}th conversation, first "
        f"{s['requests']} requests ({s['trace_span_s']:.0f} s of trace, mean prompt "
        f"{s['mean_input_tokens']:.0f} tokens, output capped at {s['output_cap']}), arrivals / "
        f"{s['time_scale']:g}; ideal hit rate (one unbounded cache) {s['ideal_hit_rate']:.3f}",
        f"- workers: {s['workers']} simulated vLLM ({s['model']} on {s['gpu']}, prefix caching on, "
        f"max_num_batched_tokens {s['max_num_batched_tokens']}), fresh for every run",
        f"- SLO: TTFT <= {SLO_TTFT:g} s and mean ITL <= {SLO_ITL * 1e3:g} ms; goodput = requests "
        "meeting it per second of arrivals",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        *(f"| {t['target']} | {t['measured']} | {'met' if t['met'] else 'NOT met'} |" for t in r["targets"]),
    ]
    for name, title in (("hits", "Hit rate, all policies"), ("sweep", "Load sweep"), ("skew", "Skewed")):
        if name not in r:
            continue
        lines += [
            "",
            f"## {title}",
            "",
            "| policy | offered req/s | hit rate | TTFT p50 / p99 s | ITL p50 / p99 ms | SLO met | "
            "goodput req/s | failed | prompt-token share per worker |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for x in r[name]:
            lines.append(
                f"| {x['policy']} | {x['offered_rps']:.2f} | {x['hit_rate']:.3f} | "
                f"{x['ttft_p50_s']:.2f} / {x['ttft_p99_s']:.2f} | {x['itl_p50_ms']:.0f} / "
                f"{x['itl_p99_ms']:.0f} | {x['slo_attainment']:.0%} | {x['goodput_rps']:.2f} | "
                f"{x['failed']} | {x['prompt_token_share']} |"
            )
    if "overhead" in r:
        o = r["overhead"]
        lines += [
            "",
            "## Router overhead (bench/router_bench.py --policy-overhead)",
            "",
            f"```\n{json.dumps(o, indent=1)}\n```",
        ]
    if "table" in r:
        t = r["table"]
        lines += [
            "",
            f"## Prefix table over {t['requests']} requests "
            f"(policy object alone, {t['endpoints']} endpoints)",
            "",
            "| requests | entries | MiB |",
            "|---|---|---|",
            *(f"| {x['requests']} | {x['entries']} | {x['bytes'] / 2**20:.1f} |" for x in t["samples"]),
            "",
            "- select() µs per request: "
            + json.dumps({k: round(v, 1) for k, v in t["select_us_per_request"].items()}),
        ]
    for run in r.get("earlier_runs", []):  # the same bench, earlier the same day (kept by hand)
        lines += ["", f"## Earlier run: {run['date']}, `{run['command']}` ({run['code']})", ""]
        lines += [
            f"- {t['target']}: {t['measured']} ({'met' if t['met'] else 'NOT met'})" for t in run["targets"]
        ]
    distinct = s["requests"] * s["mean_input_tokens"] * (1 - s["ideal_hit_rate"]) / 1e6
    lines += ["", "## Reading it", "", *(f"- {n.format(distinct=distinct)}" for n in NOTES)]
    (out / "prefix_replay.md").write_text("\n".join(lines) + "\n")


NOTES = (
    "Every Mooncake prompt starts with the same trace block (hash id 0), so the oracle (longest "
    "cached prefix, nothing else) sends every request to the first worker: it is the ceiling of "
    "the hit rate (one cache holding everything), not a latency reference.",
    "Each worker's cache holds ~430K tokens (26,914 blocks of 16, the planner's for the H100) "
    "against {distinct:.2f}M distinct prompt tokens in the sample, so little that is reused gets "
    "evicted: prefix-cache, vllm-router and the oracle all sit near the ideal hit rate, and what "
    "separates the policies is latency under load (the sweep, the skewed run), where the load "
    "bound counts.",
    "vllm-router is 0.1.17 (make setup-bench) with --policy cache_aware at its defaults "
    "(cache threshold 0.3, balance thresholds 64 requests and 1.5x); kvplan's prefix-cache runs "
    "with the plan's default load_bound (8) and table_blocks (262,144).",
    "Hit rates are the workers' own vllm:prefix_cache_hits / vllm:prefix_cache_queries (the "
    "simulated worker counts them as vLLM 0.32 does); prompt-token share per worker is each "
    "worker's share of vllm:prefix_cache_queries.",
    "The router overhead is wrk at c=1 (p50, paired round by round) and c=16 (CPU per request "
    "from /proc) on a 2-core machine shared with other benchmarks: differences of a few tens of "
    "microseconds are near its noise; select() per request in the table replay is the "
    "policy's own cost on the trace's prompts (mean ~12,000 tokens).",
)


if __name__ == "__main__":
    main()
