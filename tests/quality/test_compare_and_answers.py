"""Agreement measures and answer extraction: pure functions, checked on worked examples."""

from __future__ import annotations

import json

import pytest

from kvplan.quality.answers import BadAnswer, answer_text, streamed_answer, whole_answer
from kvplan.quality.compare import agreement, common_prefix, length_ratio, prefix_share, token_agreement


def test_the_worked_example_of_the_module_docstring() -> None:
    a = agreement("a b c d", "a b x d", [5, 6, 7, 8], [5, 6, 9, 8])
    assert (a.exact, a.prefix, a.tokens, a.length) == (0.0, 0.5, 0.75, 1.0)


def test_identical_answers_agree_fully_and_empty_ones_too() -> None:
    assert agreement("Paris.", "Paris.", [1, 2], [1, 2]).as_dict() == {
        "exact": 1.0, "prefix": 1.0, "tokens": 1.0, "length": 1.0,
    }  # fmt: skip
    assert agreement("", "", [], []).as_dict() == {"exact": 1.0, "prefix": 1.0, "tokens": 1.0, "length": 1.0}


def test_an_early_flip_ends_the_prefix_but_not_the_token_agreement() -> None:
    base = list(range(20))
    cand = [0, 99, *range(2, 20)]  # one token different, then the same again
    assert common_prefix(base, cand) == 1
    assert prefix_share(base, cand) == pytest.approx(0.05)
    assert token_agreement(base, cand) == pytest.approx(19 / 20)


def test_a_truncated_answer_shows_in_length_and_prefix() -> None:
    assert length_ratio([1, 2, 3, 4], [1, 2]) == 0.5
    assert prefix_share([1, 2, 3, 4], [1, 2]) == 0.5
    assert token_agreement([1, 2, 3, 4], []) == 0.0


def _chat(content: str | None, calls: list[dict[str, str]] | None = None) -> bytes:
    message: dict[str, object] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {"id": f"c{i}", "type": "function", "function": c} for i, c in enumerate(calls)
        ]
    return json.dumps({"choices": [{"index": 0, "message": message}]}).encode()


def _sse(*events: dict[str, object]) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def test_chat_completion_and_tool_call_answers() -> None:
    assert whole_answer(_chat("Paris.")) == "Paris."
    assert whole_answer(json.dumps({"choices": [{"text": " red"}]}).encode()) == " red"
    call = whole_answer(_chat(None, [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]))
    assert json.loads(call.strip()) == {"name": "get_weather", "arguments": '{"city": "Paris"}'}


def test_a_stream_gives_the_same_answer_as_the_whole_response() -> None:
    stream = _sse(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"content": "Par"}}]},
        {"choices": [{"index": 0, "delta": {"content": "is."}}]},
        {"choices": [], "usage": {"completion_tokens": 2}},  # a usage-only chunk
    )
    assert streamed_answer(stream) == whole_answer(_chat("Paris.")) == "Paris."
    calls = _sse(
        {
            "choices": [
                {"delta": {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": '{"x"'}}]}}
            ]
        },
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}}]},
    )
    assert answer_text(calls, True) == whole_answer(_chat(None, [{"name": "f", "arguments": '{"x": 1}'}]))
    split = b"data: " + json.dumps({"choices": [{"text": "a"}]}).encode() + b"\r\n\r\n"
    assert streamed_answer(split + b"data: [DONE]\n\n") == "a"


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"object": "error"}', b'{"choices": [1]}'])
def test_what_is_not_an_answer_says_so(body: bytes) -> None:
    with pytest.raises(BadAnswer):
        whole_answer(body)
    with pytest.raises(BadAnswer):
        streamed_answer(b"data: {broken\n\n")
