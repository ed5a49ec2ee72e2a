"""A config kvplan cannot parse is an exit 2 naming the field, never a traceback: every field sizing
reads (`config_fields.FIELDS`, `NESTED`) is fed wrong types, in configs of every family that reads it."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kvplan.errors import InputError, KvplanError
from kvplan.formats import get_format
from kvplan.planner.catalog import CATALOG
from kvplan.planner.config_fields import FIELDS, KINDS, NESTED
from kvplan.planner.gpus import GPUS
from kvplan.planner.memory import kv_capacity, weight_bytes
from kvplan.planner.models import spec_from_config

KVPLAN = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "kvplan"
# One config per rule that reads fields (dense, MoE, MLA, sliding, chunked, shared KV, Mamba1/2,
# GDN, parallel hybrid, vision, each quantization family).
BASES = (
    "llama-3.1-8b", "qwen3-30b-a3b", "deepseek-v3", "gemma-3-27b", "gemma-3n-e4b", "llama-4-scout-17b-16e",
    "nemotron-nano-9b-v2", "jamba-mini-1.7", "qwen3-next-80b-a3b", "falcon-h1-7b", "gpt-oss-20b",
    "mistral-small-3.1-24b",
)  # fmt: skip
QUANT_BASES = [n for n, c in CATALOG.items() if isinstance(c.get("quantization_config"), dict)]
# Values of the wrong type for each kind (a string where a number belongs, the reverse, lists, objects).
WRONG: dict[str, tuple[Any, ...]] = {
    "pos": ("abc", "12", [1], {"a": 1}, True, 1.5, -3, 0),
    "nonneg": ("abc", "2", [1], {"a": 1}, True, 1.5, -1),
    "int": ("abc", "128", [1], {"a": 1}, True, 1.5),
    "number": ("abc", "8.0", [1], {"a": 1}, True, -2.0, 0),
    "bool": ("yes", 1, [1], {"a": 1}),
    "str": (7, [1], {"a": 1}, True),
    "dict": ("abc", 7, [1], True),
    "pos_list": ("abc", 7, ["a"], [0], {"a": 1}),
    "nonneg_list": ("abc", 7, ["a"], [-1], {"a": 1}, [1.5]),
    "str_list": ("abc", 7, [1], {"a": 1}),
    "pos_or_list": ("abc", "4096", [], ["wide"], [0], {"a": 1}, True, 1.5, -1),
    "window": ("abc", "4096", [1], {"a": 1}, True, 1.5, -1),
    "pair": ("abc", 128, [128], [128, "a"], {"a": 1}, [128, 128, 128]),
    "str_or_list": (7, [1], {"a": 1}, True),
}
assert set(WRONG) == set(KINDS)


def _names_the_field(cfg: dict[str, Any], field: str) -> None:
    """Sizing `cfg` either works or raises a KvplanError; a wrong-typed `field` must be named."""
    with pytest.raises(InputError) as exc:
        m = spec_from_config(cfg, "fuzz", "cfg.json")
        cap = kv_capacity(m, GPUS["h200"], get_format("bf16"), max_model_len=2048)
        weight_bytes(m)
        assert cap  # sized: the wrong value went unread
    assert repr(field) in str(exc.value) or field.split(".")[-1] in str(exc.value), str(exc.value)


def _set(cfg: dict[str, Any], path: str, value: Any) -> bool:
    """Put `value` at a dotted path ("*" = the first key of that object); False if the parent is missing."""
    keys = path.split(".")
    node = cfg
    for k in keys[:-1]:
        if k == "*":
            if not isinstance(node, dict) or not node:
                return False
            k = next(iter(node))
        if not isinstance(node, dict) or not isinstance(node.get(k), dict):
            return False
        node = node[k]
    node[keys[-1]] = value
    return True


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_a_wrong_type_in_any_top_level_field_is_named(field: str) -> None:
    for base in BASES:
        for value in WRONG[FIELDS[field]]:
            cfg = copy.deepcopy(CATALOG[base])
            cfg.pop("text_config", None)
            cfg[field] = value
            _names_the_field(cfg, field)


@pytest.mark.parametrize("path", sorted(NESTED))
def test_a_wrong_type_in_any_nested_field_is_named(path: str) -> None:
    bases = QUANT_BASES if path.startswith("quantization_config") else BASES
    placed = 0
    for base in bases:
        for value in WRONG[NESTED[path]]:
            cfg = copy.deepcopy(CATALOG[base])
            top = path.split(".")[0]
            if top not in cfg and path.count(".") == 1:
                cfg[top] = {}  # rope_scaling / vision_config / quantization_config written by hand
            if not _set(cfg, path, value):
                continue
            placed += 1
            _names_the_field(cfg, path)
    assert placed, f"no base config has a parent object for {path}"


def test_every_catalog_field_fed_wrong_types_never_raises_a_python_error() -> None:
    """Beyond the table: every field present in a catalog config, set to values of other types,
    sizes or raises kvplan's own error (exit 2), never TypeError/ValueError/KeyError/..."""
    bad: list[str] = []
    for name in BASES + tuple(QUANT_BASES):
        base = CATALOG[name]
        for key in base:
            for value in ("abc", [1], {"a": 1}, 1.5, -3):
                cfg = {**copy.deepcopy(base), key: value}
                try:
                    m = spec_from_config(cfg, name)
                    kv_capacity(m, GPUS["h200"], get_format("bf16"), max_model_len=2048)
                    weight_bytes(m)
                except KvplanError:
                    pass
                except Exception as exc:  # the defect this test catches
                    bad.append(f"{name}.{key}={value!r}: {type(exc).__name__}: {exc}")
    assert not bad, bad[:5]


def test_published_configs_pass_the_type_check() -> None:
    for name, cfg in CATALOG.items():
        try:
            spec_from_config(cfg, name)
        except InputError as exc:
            assert "must be" not in str(exc), (name, exc)


@pytest.mark.parametrize(
    ("base", "field", "value", "says"),
    [
        # once a 20-line TypeError (str + int in the chunk arithmetic)
        ("llama-4-scout-17b-16e", "attention_chunk_size", "8192", "must be a positive integer, got '8192'"),
        # once silently read as 128 by int()
        ("qwen3-30b-a3b", "num_experts", "128", "must be a non-negative integer, got '128'"),
    ],
)
def test_cli_a_string_param_exits_2_naming_the_field(
    tmp_path: Path, base: str, field: str, value: str, says: str
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**CATALOG[base], field: value}))
    r = subprocess.run([str(KVPLAN), "size", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"field {field!r} {says}" in lines[0], r.stderr
