"""The simulated worker over HTTP: the official openai client, vLLM's metrics, errors, health."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvplan.formats import get_format
from kvplan.metric_names import vllm as vm
from kvplan.planner.gpus import get_gpu
from kvplan.planner.memory import kv_capacity
from kvplan.planner.models import get_model
from kvplan.workers.sim.launch import RunningWorker, sim_worker_process, sim_worker_thread, wait_healthy
from kvplan.workers.sim.profile import build_profile
from kvplan.workers.sim.server import SimSettings
from kvplan.workers.sim.text import PieceTokenizer

MODEL = "llama-3.1-8b"


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningWorker]:
    profile = build_profile(MODEL, "h100", "int8", max_model_len=8192)
    # 1/100 of real time: fast tests that still exercise the timing path
    # mean_output_tokens=0: answers run to max_tokens, so token counts are exact
    with sim_worker_thread(profile, SimSettings(speed_factor=0.01, seed=7, mean_output_tokens=0)) as running:
        yield running


@pytest.fixture(scope="module")
def client(sim: RunningWorker) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{sim.url}/v1", api_key="unused", max_retries=0)


def test_chat_completion_counts_tokens_consistently(client: openai.OpenAI, sim: RunningWorker) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12)  # type: ignore[arg-type]
    choice = out.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant" and choice.message.content
    assert out.usage is not None and out.usage.completion_tokens == 12
    assert len(PieceTokenizer().encode(choice.message.content)) == 12
    counted = httpx.post(f"{sim.url}/tokenize", json={"model": MODEL, "messages": messages}).json()
    assert out.usage.prompt_tokens == counted["count"]
    assert counted["max_model_len"] == 8192
    again = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12)  # type: ignore[arg-type]
    assert again.choices[0].message.content == choice.message.content  # seeded: same prompt, same text


def test_chat_stream_has_vllm_chunks_usage_and_done(client: openai.OpenAI, sim: RunningWorker) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a story."}],
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(PieceTokenizer().encode(text)) == 20
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 20
    raw = httpx.post(
        f"{sim.url}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3,
            "stream": True,
        },
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.endswith("data: [DONE]\n\n")


def test_completion_stream_and_not(client: openai.OpenAI) -> None:
    full = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=16)
    assert full.object == "text_completion"
    assert full.usage is not None and full.usage.completion_tokens == 16
    assert full.usage.prompt_tokens == len(PieceTokenizer().encode("Once upon a time"))
    pieces = [c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=16, stream=True
    )]  # fmt: skip
    assert "".join(pieces) == full.choices[0].text  # same prompt, same seeded answer


def test_without_max_tokens_the_pseudo_model_stops_by_itself() -> None:
    profile = build_profile(MODEL, "h100", "bf16", max_model_len=4096)
    with sim_worker_thread(profile, SimSettings(speed_factor=0, seed=3, mean_output_tokens=40)) as running:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)
        lengths = set()
        for question in ("one", "two", "three", "four"):
            out = client.completions.create(model=MODEL, prompt=question)
            assert out.choices[0].finish_reason == "stop"
            assert out.usage is not None and 16 <= out.usage.completion_tokens < 4096
            lengths.add(out.usage.completion_tokens)
        assert len(lengths) > 1  # answers differ in length, as a model's do
        capped = client.completions.create(model=MODEL, prompt="one", max_tokens=16)
        assert capped.choices[0].finish_reason == "length"
        success = _families(running.url)[vm.REQUEST_SUCCESS].samples  # type: ignore[attr-defined]
        by_reason = {s.labels["finished_reason"]: s.value for s in success if s.name.endswith("_total")}
        assert by_reason["stop"] == 4 and by_reason["length"] == 1 and by_reason["abort"] == 0


def test_max_tokens_beyond_the_context_is_clamped_like_vllm(client: openai.OpenAI) -> None:
    """vLLM 0.32's `get_max_tokens` clamps max_tokens to max_model_len - prompt (no error)."""
    out = client.completions.create(model=MODEL, prompt="word " * 8000, max_tokens=9000)
    assert out.usage is not None
    assert out.usage.prompt_tokens + out.usage.completion_tokens == 8192
    assert out.choices[0].finish_reason == "length"


def test_a_repeated_prompt_hits_the_prefix_cache(client: openai.OpenAI, sim: RunningWorker) -> None:
    def counter(name: str) -> float:
        return next(s.value for s in _families(sim.url)[name].samples if s.name.endswith("_total"))  # type: ignore[attr-defined]

    prompt = "The quick brown fox jumps over the lazy dog. " * 20
    n = httpx.post(f"{sim.url}/tokenize", json={"prompt": prompt}).json()["count"]
    hits, queries = counter(vm.PREFIX_CACHE_HITS), counter(vm.PREFIX_CACHE_QUERIES)
    lookup = httpx.post(f"{sim.url}/debug/prefix_cache/lookup", json={"prompt": prompt}).json()
    assert lookup == {"prompt_tokens": n, "cached_tokens": 0}
    client.completions.create(model=MODEL, prompt=prompt, max_tokens=2)
    lookup = httpx.post(f"{sim.url}/debug/prefix_cache/lookup", json={"prompt": prompt}).json()
    assert lookup["cached_tokens"] == (n - 1) // 16 * 16  # what the next identical request will hit
    assert counter(vm.PREFIX_CACHE_QUERIES) - queries == n
    assert counter(vm.PREFIX_CACHE_HITS) == hits  # first time: nothing cached
    client.completions.create(model=MODEL, prompt=prompt, max_tokens=2)
    # the full blocks before the last prompt token (which is always computed, as in vLLM)
    assert counter(vm.PREFIX_CACHE_HITS) - hits == (n - 1) // 16 * 16 > 0
    families = _families(sim.url)
    for name, doc in (
        (vm.PREFIX_CACHE_QUERIES, "Prefix cache queries, in terms of number of queried tokens."),
        (vm.PREFIX_CACHE_HITS, "Prefix cache hits, in terms of number of cached tokens."),
    ):  # as vLLM 0.32 declares them (vllm/v1/metrics/loggers.py)
        family = families[name]
        assert (family.type, family.documentation) == ("counter", doc)  # type: ignore[attr-defined]
        assert {tuple(sorted(s.labels)) for s in family.samples} == {("engine", "model_name")}  # type: ignore[attr-defined]
    info = families[vm.CACHE_CONFIG_INFO].samples[0]  # type: ignore[attr-defined]
    assert info.labels["enable_prefix_caching"] == "True"


def test_models_lists_the_served_model_with_max_model_len(sim: RunningWorker) -> None:
    data = httpx.get(f"{sim.url}/v1/models").json()["data"]
    assert [m["id"] for m in data] == [MODEL]
    assert data[0]["max_model_len"] == 8192


def test_bad_requests_get_openai_shaped_errors(client: openai.OpenAI, sim: RunningWorker) -> None:
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=MODEL, prompt="word " * 9000, max_tokens=1)
    err = too_long.value.body
    assert isinstance(err, dict) and "maximum context length is 8192 tokens" in err["message"]
    assert "9001 input tokens" in err["message"] and err["param"] == "input_tokens"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="hello", max_tokens=4)
    for body in (
        {"model": MODEL, "prompt": "x", "max_tokens": 0},
        {"model": MODEL, "prompt": "x", "max_tokens": "5"},
    ):
        r = httpx.post(f"{sim.url}/v1/completions", json=body)
        assert r.status_code == 400
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert r.json()["error"]["param"] == "max_tokens"
    r = httpx.post(
        f"{sim.url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def _families(url: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)}


def test_metrics_have_vllm_names_types_and_labels(client: openai.OpenAI, sim: RunningWorker) -> None:
    client.completions.create(model=MODEL, prompt="count me", max_tokens=5)
    fams = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{sim.url}/metrics").text)}
    expected = {
        vm.KV_CACHE_USAGE: "gauge",
        vm.NUM_REQUESTS_RUNNING: "gauge",
        vm.NUM_REQUESTS_WAITING: "gauge",
        vm.CACHE_CONFIG_INFO: "gauge",
        vm.NUM_PREEMPTIONS: "counter",
        vm.PROMPT_TOKENS: "counter",
        vm.GENERATION_TOKENS: "counter",
        vm.REQUEST_SUCCESS: "counter",
        vm.PREFIX_CACHE_QUERIES: "counter",
        vm.PREFIX_CACHE_HITS: "counter",
        vm.TIME_TO_FIRST_TOKEN: "histogram",
        vm.INTER_TOKEN_LATENCY: "histogram",
        vm.E2E_REQUEST_LATENCY: "histogram",
    }
    for name, kind in expected.items():
        assert name in fams, name
        assert fams[name].type == kind, name
    for name in set(expected) - {vm.CACHE_CONFIG_INFO}:
        for sample in fams[name].samples:
            assert sample.labels["model_name"] == MODEL and sample.labels["engine"] == "0", sample
    counters = {s.name for name in expected for s in fams[name].samples if fams[name].type == "counter"}
    assert f"{vm.GENERATION_TOKENS}_total" in counters and f"{vm.NUM_PREEMPTIONS}_total" in counters
    (info,) = fams[vm.CACHE_CONFIG_INFO].samples
    capacity = kv_capacity(get_model(MODEL), get_gpu("h100")[0], get_format("int8"), max_model_len=8192)
    assert info.labels["num_gpu_blocks"] == str(capacity.num_blocks)
    assert info.labels["kv_cache_size_tokens"] == str(capacity.kv_tokens)
    assert info.labels["engine"] == "0" and "model_name" not in info.labels
    assert info.labels["block_size"] == "16" and info.labels["cache_dtype"] == "int8"
    assert info.value == 1
    success = {
        s.labels["finished_reason"]: s.value
        for s in fams[vm.REQUEST_SUCCESS].samples
        if s.name.endswith("_total")
    }
    assert success["length"] >= 1
    ttft_count = [s.value for s in fams[vm.TIME_TO_FIRST_TOKEN].samples if s.name.endswith("_count")]
    assert ttft_count[0] >= 1
    buckets = [s.labels["le"] for s in fams[vm.TIME_TO_FIRST_TOKEN].samples if s.name.endswith("_bucket")]
    assert buckets[:-1] == [str(float(b)) for b in vm.TTFT_BUCKETS]


@pytest.fixture
def realtime_sim() -> Iterator[RunningWorker]:
    """Real H100 speed: a 400-token answer takes seconds, long enough to look at it in flight."""
    profile = build_profile(MODEL, "h100", "int8", max_model_len=8192)
    with sim_worker_thread(profile, SimSettings(speed_factor=1.0)) as running:
        yield running


def test_load_shows_in_running_waiting_and_kv_usage(realtime_sim: RunningWorker) -> None:
    """A request in flight holds its blocks: the gauges a router scrapes move, then return to 0."""
    sim = realtime_sim
    prompt = "word " * 4000
    tokens = httpx.post(f"{sim.url}/tokenize", json={"prompt": prompt}).json()["count"]
    usable = sim.worker.engine.config.usable_blocks
    with httpx.stream(
        "POST",
        f"{sim.url}/v1/completions",
        json={"model": MODEL, "prompt": prompt, "max_tokens": 400, "stream": True, "ignore_eos": True},
    ) as r:
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data:"))
        fams = _families(sim.url)
        usage = fams[vm.KV_CACHE_USAGE].samples[0].value  # type: ignore[attr-defined]
        running = fams[vm.NUM_REQUESTS_RUNNING].samples[0].value  # type: ignore[attr-defined]
        assert running == 1
        blocks = round(usage * usable)
        assert blocks == pytest.approx(usage * usable)  # a whole number of blocks
        assert -(-tokens // 16) <= blocks <= -(-(tokens + 400) // 16)  # prompt, plus what it decoded
    deadline = time.monotonic() + 10
    while sim.worker.engine.has_work and time.monotonic() < deadline:
        time.sleep(0.01)  # polling a condition: the aborted stream frees its blocks
    assert sim.worker.engine.used_blocks == 0
    fams = _families(sim.url)
    assert fams[vm.KV_CACHE_USAGE].samples[0].value == 0  # type: ignore[attr-defined]


def test_a_killed_engine_fails_health_and_requests_until_revived(
    sim: RunningWorker, client: openai.OpenAI
) -> None:
    assert httpx.post(f"{sim.url}/debug/engine/kill").status_code == 200
    try:
        assert httpx.get(f"{sim.url}/health").status_code == 503
        r = httpx.post(f"{sim.url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["code"] == 503
    finally:
        httpx.post(f"{sim.url}/debug/engine/revive")
    assert httpx.get(f"{sim.url}/health").status_code == 200
    assert client.completions.create(model=MODEL, prompt="back", max_tokens=2).usage.completion_tokens == 2  # type: ignore[union-attr]


def test_cli_subprocess_serves_and_bad_input_exits_2() -> None:
    args = [
        "--model",
        MODEL,
        "--gpu",
        "h100",
        "--kv-format",
        "fp8_e4m3",
        "--speed-factor",
        "0",
        "--max-model-len",
        "4096",
    ]
    with sim_worker_process(args) as url:
        out = openai.OpenAI(base_url=f"{url}/v1", api_key="x").completions.create(
            model=MODEL, prompt="hi", max_tokens=3
        )
        assert out.usage is not None and out.usage.completion_tokens == 3
        info = _families(url)[vm.CACHE_CONFIG_INFO].samples[0]  # type: ignore[attr-defined]
        assert info.labels["cache_dtype"] == "fp8_e4m3"
    bad = subprocess.run(
        [sys.executable, "-m", "kvplan.cli", "worker", "sim", "--gpu", "h1000", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: ") and "h1000" in bad.stderr and "Traceback" not in bad.stderr


def test_sigterm_ends_open_streams_and_exits_promptly() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvplan.cli", "worker", "sim", "--port", "0", "--max-model-len", "8192"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split("listening on ")[1].split()[0]
        wait_healthy(url, proc=proc)
        body = {"prompt": "hi", "max_tokens": 5000, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data:"))  # streaming at H100 speed
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line.startswith("data:")]
        # uvicorn re-raises the captured signal after its clean shutdown
        assert proc.wait(timeout=10) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 4  # not the 5,000 tokens (~35 s), nor a 5 s drain timeout
        assert '"error"' in rest[-2] and rest[-1] == "data: [DONE]"
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def test_wall_clock_follows_the_roofline_times_the_speed_factor(realtime_sim: RunningWorker) -> None:
    """At speed 1 an answer takes what the planner's roofline says an H100 takes (loose bounds:
    the machine running the tests may be busy; the worker sleeps to absolute deadlines)."""
    cost = realtime_sim.worker.profile.cost
    prompt = "word " * 499  # 500 tokens with the trailing space
    n = 100
    expected = cost.prefill_seconds(500) + sum(cost.decode_seconds(1, 500 + i) for i in range(1, n))
    started = time.monotonic()
    body = {"model": MODEL, "prompt": prompt, "max_tokens": n, "ignore_eos": True}
    out = httpx.post(f"{realtime_sim.url}/v1/completions", json=body, timeout=30).json()
    elapsed = time.monotonic() - started
    assert out["usage"] == {
        "prompt_tokens": 500,
        "total_tokens": 600,
        "completion_tokens": 100,
        "prompt_tokens_details": None,
    }
    assert 0.95 * expected <= elapsed <= 2.0 * expected + 0.2, (elapsed, expected)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--kv-format", "int9"], "unknown KV format 'int9'"),
        (["--model", "llama-9"], "unknown model 'llama-9'"),
        (["--max-model-len", "900000"], "greater than llama-3.1-8b's context length 131072"),
        (["--kv-memory-gib", "1"], "cannot hold one request of max_model_len 32768"),
        (["--num-blocks", "10"], "cannot hold one request"),
        (["--max-model-len", "0"], "max_model_len must be positive"),
    ],
)
def test_bad_worker_options_exit_2_with_the_reason(args: list[str], reason: str) -> None:
    from typer.testing import CliRunner

    from kvplan.cli import app
    from kvplan.errors import InputError

    result = CliRunner().invoke(app, ["worker", "sim", "--port", "0", *args])
    assert isinstance(result.exception, InputError)  # kvplan.cli.main prints it and exits 2
    assert reason in str(result.exception)


def test_an_api_key_guards_v1_like_vllm() -> None:
    profile = build_profile(MODEL, "h100", "bf16", max_model_len=4096)
    with sim_worker_thread(profile, SimSettings(speed_factor=0, api_key="sk-sim")) as running:
        denied = httpx.get(f"{running.url}/v1/models", headers={"Authorization": "Bearer wrong"})
        assert denied.status_code == 401 and denied.json() == {"error": "Unauthorized"}
        assert httpx.post(f"{running.url}/v1/completions", json={"prompt": "x"}).status_code == 401
        assert httpx.get(f"{running.url}/health").status_code == 200  # outside /v1: open
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="sk-sim", max_retries=0)
        assert client.completions.create(model=MODEL, prompt="hi", max_tokens=2).usage.completion_tokens == 2  # type: ignore[union-attr]
