"""Traffic files and mixes: the C-speed readers agree with the exact per-row readers."""

import json
from pathlib import Path

import numpy as np
import pytest

from kvplan.errors import InputError
from kvplan.planner import traffic as T
from kvplan.planner.fleet import BASELINE_FORMAT, bucket_loads, policy_formats
from kvplan.planner.gpus import get_gpu

DATA = Path(__file__).resolve().parents[2] / "data" / "traces"  # shipped with their licences
ROWS = [(0.0, 1200, 300), (1.5, 9000, 20), (2.0, 17000, 512), (10.0, 40000, 1)]


def _csv(tmp_path: Path) -> Path:
    p = tmp_path / "t.csv"
    p.write_text("timestamp,prompt_tokens,output_tokens\n" + "".join(f"{t},{a},{b}\n" for t, a, b in ROWS))
    return p


def _jsonl(tmp_path: Path, time_key: str = "timestamp") -> Path:
    p = tmp_path / "t.jsonl"
    p.write_text(
        "".join(json.dumps({time_key: t, "prompt_tokens": a, "output_tokens": b}) + "\n" for t, a, b in ROWS)
    )
    return p


def test_fast_and_exact_readers_agree(tmp_path: Path) -> None:
    for path, fast, exact in (
        (_csv(tmp_path), T._fast_csv, T._load_csv),
        (_jsonl(tmp_path), T._fast_jsonl, T._load_jsonl),
    ):
        quick = fast(path)
        assert quick is not None, path
        prompts, outputs, duration = exact(path)
        assert list(quick[0]) == list(prompts) == [r[1] for r in ROWS]
        assert list(quick[1]) == list(outputs) == [r[2] for r in ROWS]
        assert quick[2] == duration == 10.0
    t = T.load_traffic(_csv(tmp_path))
    assert t.rps == pytest.approx(4 / 10.0)
    assert t.share_above(8192) == 0.75 and t.share_above(16384) == 0.5


def test_mooncake_and_azure_traces_load_as_shipped() -> None:
    moon = T.load_traffic(DATA / "mooncake-trace-2025" / "conversation.jsonl")
    assert moon.requests == 12_031
    assert float(np.mean(moon.prompt_tokens)) == pytest.approx(12_035, rel=0.01)  # README: average input
    assert moon.duration_s is not None and 3000 < moon.duration_s <= 3600  # milliseconds, one hour
    azure = T.load_traffic(DATA / "azure-llm-trace-2023" / "code.csv")
    assert azure.requests == 8_819 and azure.share_above(8192) < 0.01
    assert azure.duration_s is not None and 3000 < azure.duration_s <= 3600  # ISO date-times


def test_timestamp_ms_key(tmp_path: Path) -> None:
    t = T.load_traffic(_jsonl(tmp_path, "timestamp_ms"))
    assert t.duration_s == pytest.approx(0.010)


def test_blank_lines_and_quoted_csv_take_the_exact_path(tmp_path: Path) -> None:
    p = tmp_path / "q.csv"
    p.write_text('prompt_tokens,output_tokens\n"10",5\n\n20,6\n')
    assert T._fast_csv(p) is None
    t = T.load_traffic(p, rps=2.0)
    assert list(t.prompt_tokens) == [10, 20] and t.rps == 2.0


@pytest.mark.parametrize(
    ("text", "line", "why"),
    [
        ("prompt_tokens,output_tokens\n1,2\n3,-4\n", 3, "negative"),
        ("prompt_tokens,output_tokens\n1,2\n3\n", 3, "expected 2 columns"),
        ("prompt_tokens,output_tokens\n1,2.5\n", 2, "not a whole number"),
        ("tokens,out\n1,2\n", 1, "header needs prompt_tokens"),
    ],
)
def test_bad_csv_rows_name_line_and_reason(tmp_path: Path, text: str, line: int, why: str) -> None:
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(InputError, match=rf"bad\.csv:{line}: .*{why}"):
        T.load_traffic(p, rps=1.0)


def test_bad_jsonl_lines(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt_tokens": 1, "output_tokens": 2}\n{"prompt_tokens": 1, "output_tokens": 2\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2: not valid JSON"):
        T.load_traffic(p, rps=1.0)
    p.write_text('{"prompt_tokens": 1, "output_tokens": -2}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:1: output_tokens -2 is negative"):
        T.load_traffic(p, rps=1.0)


def test_missing_rate_is_asked_for(tmp_path: Path) -> None:
    p = tmp_path / "n.csv"
    p.write_text("prompt_tokens,output_tokens\n1,2\n")
    with pytest.raises(InputError, match="pass --rps"):
        T.load_traffic(p)


def test_parse_tokens_and_context_mix() -> None:
    assert [T.parse_tokens(x) for x in ("8k", "32K", "4096", "1m")] == [8192, 32768, 4096, 1 << 20]
    for bad in ("0", "-8k", "1.5", "eight"):
        with pytest.raises(InputError):
            T.parse_tokens(bad)
    mix = T.parse_context_mix("8k:60,16k:25,32k:15", rps=40)
    assert mix.share_above(8192) == pytest.approx(0.40) and mix.share_above(16384) == pytest.approx(0.15)
    loads, over = bucket_loads(mix, (8192, 16384, 32768))
    assert [round(b.rps, 6) for b in loads] == [24, 10, 6] and over == 0


def test_decision_framework() -> None:
    h100, _ = get_gpu("h100")
    a100, _ = get_gpu("a100-80gb")
    buckets = (8192, 16384, 32768)
    short, _ = policy_formats(0.10, 0.02, buckets, h100, False)
    assert set(short.values()) == {("fp8_e4m3",)}
    assert set(policy_formats(0.10, 0.02, buckets, a100, False)[0].values()) == {("int8",)}  # no FP8 on A100
    long, why = policy_formats(0.46, 0.235, buckets, h100, False)
    assert long == {8192: ("int8",), 16384: ("int8", "int4"), 32768: ("int8",)}
    assert "INT4 pilot" in why
    assert policy_formats(0.46, 0.235, buckets, h100, True)[0][32768] == ("int8", "int4")
    assert policy_formats(0.35, 0.05, buckets, h100, False)[0][16384] == ("int8",)  # no pilot below 10%
    assert BASELINE_FORMAT == "bf16"
