"""The eval prompt set: its format, its errors (file and line), and how answers are scored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvplan.errors import InputError
from kvplan.quality.prompts import EvalPrompt, Task, ToolCall, load_prompts, parse_prompt
from kvplan.quality.scoring import cited_share, find_call, normalise, score

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "kvplan/quality/data/example_prompts.jsonl"
USER = [{"role": "user", "content": "hi"}]
A = '"messages": [{"role": "user", "content": "a"}]'


def _p(task: str, **kw: object) -> EvalPrompt:
    return parse_prompt({"task": task, "messages": USER, **kw}, "x:1", "line-1")


def test_the_shipped_example_set_loads_and_covers_every_task_type() -> None:
    prompts = load_prompts(EXAMPLE)
    assert {p.task for p in prompts} == set(Task)
    assert len({p.id for p in prompts}) == len(prompts) >= 16


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "x.jsonl:2: not a JSON object"),
        ("[1, 2]", "x.jsonl:2: each line must be a JSON object, got list"),
        ('{"messages": []}', "x.jsonl:2: 'messages' must be a non-empty list"),
        ('{"messages": [{"role": "user"}]}', "x.jsonl:2: messages[0] must be an object with string"),
        ('{"task": "poem", ' + A + "}", "x.jsonl:2: unknown task 'poem'"),
        ("{" + A + ', "answer": 1}', "x.jsonl:2: unknown fields ['answer']"),
        ('{"task": "citation", ' + A + "}", "needs 'sources'"),
        ('{"task": "tool_call", ' + A + ', "reference": "f"}', 'a tool_call reference must be {"name": str'),
        ("{" + A + ', "max_tokens": 0}', "'max_tokens' must be a positive"),
        ("{" + A + ', "max_tokens": true}', "'max_tokens' must be a positive"),
        ("{" + A + ', "reference": 5}', "x.jsonl:2: 'reference' must be a string for task exact"),
        ("{" + A + ', "sources": ["S1", 3]}', "x.jsonl:2: 'sources' must be a list of source ids"),
        ("{" + A + ', "tools": "search"}', "x.jsonl:2: 'tools' must be a list of OpenAI tool objects"),
        ('{"id": "", ' + A + "}", "x.jsonl:2: 'id' must be a non-empty string"),
        ('{"id": "a", ' + A + "}", "prompt ids must be unique; repeated: ['a']"),
    ],
)  # fmt: skip
def test_a_bad_line_is_named_with_its_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": "a", "messages": [{"role": "user", "content": "ok"}]}\n' + line + "\n")
    with pytest.raises(InputError) as err:
        load_prompts(path)
    text = str(err.value).replace(str(tmp_path) + "/", "")
    assert message in text and text.startswith("x.jsonl")


def test_an_empty_or_binary_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("# only a comment\n\n")
    with pytest.raises(InputError, match="no prompts"):
        load_prompts(tmp_path / "empty.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="not a UTF-8 text file"):
        load_prompts(tmp_path / "bin.jsonl")
    with pytest.raises(InputError, match="cannot read prompt file"):
        load_prompts(tmp_path / "missing.jsonl")


def test_exact_ignores_case_space_quotes_and_end_punctuation() -> None:
    p = _p("exact", reference="Paris")
    assert normalise('  "Paris."\n') == "paris"
    assert score(p, "paris.", "") == 1.0
    assert score(p, "The capital is Paris.", "") == 0.0
    no_ref = _p("exact")
    assert score(no_ref, "Lyon", "Lyon.") == 1.0 and score(no_ref, "Paris", "Lyon") == 0.0


def test_citation_wants_the_required_sources_and_only_those() -> None:
    assert cited_share("As [S2] and S5: says", ("S2", "S5")) == 1.0
    assert cited_share("See [S21].", ("S2",)) == 0.0
    assert cited_share("At 100 degrees [A] [B] [C] [", ("B",)) == pytest.approx(1 / 3)
    assert cited_share("Rome [S1].", ("S2",)) == 0.0
    assert score(_p("citation", sources=["S1", "S4"]), "Per [S4].", "") == 0.5


def test_tool_calls_are_found_in_text_or_native_calls() -> None:
    want = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
    p = _p("tool_call", reference=want)
    assert isinstance(p.reference, ToolCall)
    text = 'Sure: {"name": "get_weather", "arguments": {"unit": "celsius", "city": "Paris"}} done'
    assert score(p, text, "") == 1.0
    native = "\n" + json.dumps({"name": "get_weather", "arguments": json.dumps(want["arguments"])})
    assert score(p, native, "") == 1.0
    assert score(p, '{"name": "get_weather", "arguments": {"city": "Lyon"}}', "") == 0.5
    assert score(p, "I cannot call tools.", "") == 0.0
    assert find_call('{"function": {"name": "f", "parameters": {"a": 1}}}') == ToolCall("f", {"a": 1})
    # no reference: the baseline's call is the reference
    assert score(_p("tool_call"), '{"name": "f", "arguments": {}}', '{"name": "f", "arguments": {}}') == 1.0


def test_multi_turn_needs_the_reference_as_whole_words() -> None:
    p = _p("multi_turn", reference="blue")
    assert score(p, "Your favourite colour is blue.", "") == 1.0
    assert score(p, "It is blueberry.", "") == 0.0
