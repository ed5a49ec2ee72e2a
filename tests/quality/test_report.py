"""The eval report: paired differences with their confidence interval, ranking, worst regressions."""

from __future__ import annotations

import math

import pytest

from kvplan.quality.prompts import EvalPrompt, Task
from kvplan.quality.report import build_report, paired_difference, t975, to_markdown

MSG = ({"role": "user", "content": "q"},)


def test_paired_difference_uses_students_t_on_the_differences() -> None:
    # 20 prompts, one regression of 1: mean -0.05, sd 0.2236, se 0.05, t(19) 2.093
    d = paired_difference([1.0] * 19 + [0.0], [1.0] * 20)
    assert d.mean == pytest.approx(-0.05)
    assert (d.low, d.high) == (
        pytest.approx(-0.05 - 2.093 * 0.05, abs=1e-4),
        pytest.approx(-0.05 + 2.093 * 0.05, abs=1e-4),
    )
    assert t975(1) == 12.706 and t975(500) == 1.96
    same = paired_difference([1.0, 0.0], [1.0, 0.0])
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0)
    one = paired_difference([0.0], [1.0])
    assert one.mean == -1.0 and math.isinf(one.low)


def _prompts() -> list[EvalPrompt]:
    return [EvalPrompt(f"e{i}", Task.EXACT, MSG) for i in range(4)] + [
        EvalPrompt(f"c{i}", Task.CITATION, MSG, sources=("S1",)) for i in range(2)
    ]


def test_ranking_rows_and_worst_regressions() -> None:
    prompts = _prompts()
    ids = [p.id for p in prompts]
    scores = {
        "base": dict.fromkeys(ids, 1.0),
        "int8": {**dict.fromkeys(ids, 1.0), "e3": 0.0},
        "int4": {**dict.fromkeys(ids, 0.0), "c1": 1.0},
    }
    answers = {pool: {i: f"{pool}:{i}" for i in ids} for pool in scores}
    r = build_report("short", prompts, "base", ["int4", "int8"], scores, answers, worst_n=2)
    assert [row.task for row in r.rows] == ["citation", "exact", "all"]
    assert r.overall.scores == {"base": 1.0, "int8": pytest.approx(5 / 6), "int4": pytest.approx(1 / 6)}
    assert r.ranking() == ["int8", "int4"]
    assert r.regression("int4") == pytest.approx(5 / 6)
    assert r.failing(0.2) == ["int4"] and r.failing(0.9) == []
    assert [w.prompt for w in r.worst["int8"]] == ["e3"]
    assert [w.prompt for w in r.worst["int4"]] == ["c0", "e0"]  # worst first, then by id, capped
    assert (
        r.worst["int4"][0].baseline_answer == "base:c0" and r.worst["int4"][0].candidate_answer == "int4:c0"
    )
    md = to_markdown(r)
    assert "| all | 6 | 1.000 | 0.167 | -0.833 [" in md
    assert "Ranking (overall score): int8 > int4" in md
    data = r.to_json()
    assert data["ranking"] == ["int8", "int4"] and data["tasks"][-1]["task"] == "all"  # type: ignore[index]
