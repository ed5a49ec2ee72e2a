"""The GPU harness (bench/vllm_gpu) on this machine: its pure parts, the runner's failure handling,
and one dry run of a whole set on vLLM's CPU build (vLLM's own attention as the reference,
kvplan's plugin teacher-forced against it)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest
from workers_stack import REPO, VLLM_PYTHON

from bench.vllm_gpu import configs, engine, run
from bench.vllm_gpu.configs import DecodePoint, EngineConfig
from bench.vllm_gpu.logs import parse_vllm_log
from bench.vllm_gpu.site_setup import write_plugin_entry_point

# lines as vLLM 0.33 logs them (vllm/v1/worker/gpu_worker.py, v1/core/kv_cache_utils.py, ...)
LOG = "\n".join([
    "INFO 12-03 [gpu_model_runner.py:5089] Model loading took 14.99 GiB memory and 4.812345 seconds",
    "INFO 12-03 [gpu_worker.py:773] Available KV cache memory: 108.78 GiB",
    "INFO 12-03 [kv_cache_utils.py:1148] GPU KV cache size: 891,088 tokens, "
    "Maximum concurrency for 32,800 tokens per request: 27.17x",
    "INFO 12-03 [core.py:413] init engine (profile, create kv cache, warmup model) took 21.37 s",
    "INFO 12-03 [cuda.py:448] Using AttentionBackendEnum.CUSTOM backend.",
])  # fmt: skip


def test_vllm_log_lines_are_read() -> None:
    got = parse_vllm_log(LOG)
    assert got == {
        "available_kv_gib": 108.78, "kv_cache_tokens": 891088, "concurrency_len": 32800,
        "max_concurrency": 27.17,
        "model_load_gib": 14.99, "model_load_s": 4.812345, "init_engine_s": 21.37,
        "attention_backend": "AttentionBackendEnum.CUSTOM",
    }  # fmt: skip
    assert parse_vllm_log("nothing here") == {}


def test_configs_refuse_what_cannot_run() -> None:
    with pytest.raises(ValueError, match="attention must be"):
        EngineConfig(name="x", attention="flash")
    with pytest.raises(ValueError, match="kv_format is set exactly"):
        EngineConfig(name="x", attention="vllm", kv_format="int8")
    with pytest.raises(ValueError, match="kvplan pools run with kv_cache_dtype auto"):
        EngineConfig(name="x", attention="kvplan", kv_format="int8", kv_cache_dtype="fp8")
    with pytest.raises(ValueError, match="unknown phases"):
        configs.vllm_config("auto", phases=("warmup",))
    with pytest.raises(ValueError, match="does not fit max_model_len"):
        configs.vllm_config("auto", points=(DecodePoint("z", 40000, 1),))
    configs.vllm_config("auto", phases=("correct",), max_model_len=4096)  # no decode: no points to fit
    with pytest.raises(KeyError, match="unknown config set 'nope'"):
        configs.get_set("nope")


def test_every_set_is_well_formed_and_round_trips() -> None:
    for name in configs.SETS:
        cfgs, parallel = configs.get_set(name)
        assert parallel >= 1 and cfgs
        corrects = [c for c in cfgs if "correct" in c.phases]
        if corrects:  # one reference, run first, for the configs that compare with it
            assert [c.reference for c in cfgs].count(True) == 1, name
        for c in cfgs:
            assert EngineConfig.from_json(c.to_json()) == c


def test_engine_arguments_per_attention() -> None:
    kv = configs.kvplan_config("int4_hadamard")
    args = engine.engine_kwargs(kv, "/m")
    assert args["attention_backend"] == "CUSTOM" and args["kv_cache_dtype"] == "auto"
    assert args["enforce_eager"] is True and args["compilation_config"] == {"custom_ops": ["none"]}
    assert args["kv_transfer_config"]["kv_connector"] == "KvplanDecodeBench"
    assert engine.engine_env(kv)["KVPLAN_KV_FORMAT"] == "int4_hadamard"
    vl = configs.with_graphs(configs.vllm_config("int8_per_token_head", phases=("correct",)))
    args = engine.engine_kwargs(vl, "/m")
    assert args["attention_backend"] == "TRITON_ATTN" and args["kv_cache_dtype"] == "int8_per_token_head"
    assert (
        args["enforce_eager"] is False and args["compilation_config"]["cudagraph_mode"] == "FULL_DECODE_ONLY"
    )
    assert "kv_transfer_config" not in args and "KVPLAN_KV_FORMAT" not in engine.engine_env(vl)
    sized = dataclasses.replace(vl, engine_args={"kv_cache_memory_bytes": 1 << 30})
    assert engine.engine_kwargs(sized, "/m")["kv_cache_memory_bytes"] == 1 << 30


def test_decode_batch_and_steady_steps() -> None:
    # 32,768 + 32 tokens = 2,050 blocks of 16 per sequence; block 0 is vLLM's null block
    assert engine.point_batch(configs.POINT_B, 2050 * 27 + 1, 16, 256) == 27
    assert engine.point_batch(configs.POINT_B, 2050 * 27, 16, 256) == 26
    assert engine.point_batch(configs.POINT_B, 2050 * 999, 16, 256) == 256
    assert engine.point_batch(configs.POINT_A, 10, 16, 256) == 32
    steps = [{"s": 9.0, "emitted": 4}] * configs.WARM_STEPS + [{"s": 0.1, "emitted": 4}] * 20
    steps += [{"s": 5.0, "emitted": 3}] * 4  # a sequence missing: not a steady step
    got = engine.decode_summary(DecodePoint("a", 100, 4), 4, steps)
    assert got["step_ms"] == 100.0 and got["tokens_per_s"] == 40.0 and got["full_steps"] == 20
    assert got["complete"] is False  # 24 measured steps expected


def test_runner_reports_failures_and_deadline_skips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine that cannot start (no vLLM in this environment) is a failed result with its
    error and log tail; what the deadline leaves out is skipped; at most 8 files come back."""
    cfgs = [
        configs.kvplan_config("int8", phases=("correct",)),
        configs.kvplan_config("int4", phases=("correct",)),
    ]
    monkeypatch.setitem(configs.SETS, "t", (lambda: cfgs, 1))
    results = run.run_set("t", tmp_path / "out", deadline_s=60, work_root=tmp_path / "work")
    first, second = results
    assert first["status"] == "failed" and "vllm" in first["error"] and first["rc"] == 1
    assert "ENGINE_RESULT kvplan-int8 failed" in first["log_tail"]
    assert second["status"] in ("failed", "skipped")
    results = run.run_set("t", tmp_path / "out", deadline_s=5, work_root=tmp_path / "work")
    assert [r["status"] for r in results] == ["skipped", "skipped"]
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["t-logs.tgz", "t.json"]
    saved = json.loads((tmp_path / "out" / "t.json").read_text())
    assert saved["meta"]["set"] == "t" and [r["name"] for r in saved["results"]] == [
        "kvplan-int8",
        "kvplan-int4",
    ]


@pytest.mark.vllm
def test_cpu_set_through_vllms_cpu_build(tmp_path: Path) -> None:
    """The whole harness on vLLM's CPU build: reference (vLLM's own attention) and kvplan int8,
    every phase. (vLLM's CPU build repacks linear weights, so only embeddings are redrawn there:
    attention barely moves the logits, which is why agreement is the check, not the error.)"""
    write_plugin_entry_point(tmp_path / "ep")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "ep"), str(REPO)])}
    cmd = [str(VLLM_PYTHON), "-m", "bench.vllm_gpu.run", "cpu", "--out", str(tmp_path / "out"),
           "--work", str(tmp_path / "work"), "--deadline-s", "600"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=700)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ref, q8 = json.loads((tmp_path / "out" / "cpu.json").read_text())["results"]
    assert ref["phases"]["correct"]["role"] == "reference"
    corr = q8["phases"]["correct"]
    assert corr["followed_forced_tokens"] and corr["finite"] and not corr["missing_logits"]
    assert corr["positions"] == 8 * 6 and corr["argmax_agreement"] >= 0.9 and corr["rel_err_max"] < 0.05
    # every greedy flip is listed with the reference's margin and the logit difference there
    assert len(corr["flips"]) == round((1 - corr["argmax_agreement"]) * corr["positions"])
    assert all(f["ref_margin"] >= 0 and f["max_abs_diff"] >= 0 for f in corr["flips"])
    assert 0 <= corr["flips_near_tie"] <= len(corr["flips"])
    assert q8["log"]["kv_cache_tokens"] > 3 * ref["log"]["kv_cache_tokens"]  # int8 pages vs fp32
    a = q8["phases"]["decode"]["a"]
    assert a["batch"] == 4 and a["complete"] and a["tokens_per_s"] > 0
    assert q8["phases"]["prefill"]["tokens_per_s"] > 0
    assert "config" in proc.stdout.splitlines()[-3]  # the table is printed last


def test_report_judges_the_targets_from_the_results() -> None:
    from bench.vllm_gpu import report

    def res(name: str, a: float, b: float, correct: dict | None = None) -> dict:
        point = {"batch": 32, "context": 16384, "step_ms": 1.0, "tokens_per_s": a, "complete": True}
        phases: dict = {"decode": {"a": point, "b": {**point, "tokens_per_s": b}}}
        if correct:
            phases["correct"] = correct
        return {"name": name, "set": "s", "status": "ok", "engine": {}, "phases": phases}

    forced = {
        "role": "teacher-forced on the reference's tokens",
        "rel_err_max": 4e-3,
        "argmax_agreement": 1.0,
    }
    results = [res("vllm-auto", 1000, 500), res("vllm-int4_per_token_head", 400, 1500),
               res("kvplan-bf16", 990, 495, forced), res("kvplan-int4_hadamard", 1200, 1400)]  # fmt: skip
    lines = report.targets(results, [])
    assert lines[0].startswith("- kvplan-bf16 vs vLLM bf16: logits rel. err max 4.00e-03 (<= 1e-2)")
    assert lines[0].endswith("greedy tokens identical: True -> met")
    assert lines[1].endswith("= 3.00x (target >= 2.0x) -> met")  # 1200 / 400
    assert lines[2].endswith("= 1.20x (target >= 1.0x) -> met")
    assert lines[3].endswith("= 2.80x (target >= 3x) -> NOT met")  # 1400 / 500
    # the real model's set is judged on its own, and does not stand in for the dummy-weight check
    smol = [{**res(n, 1, 1, {**forced, "argmax_agreement": a, "positions": 1024}), "set": "smollm2"}
            for n, a in (("kvplan-bf16", 1.0), ("kvplan-int8", 0.975))]  # fmt: skip
    lines = report.targets(smol + results, [])
    assert lines[0].startswith("- kvplan-bf16 vs vLLM bf16: logits rel. err max 4.00e-03")
    assert lines[1].startswith("- SmolLM2-135M (real weights) kvplan-bf16 vs vLLM bf16")
    assert lines[1].endswith(
        "agreement 1.000 over 1024 positions, logits rel. err max 4.00e-03 (target >= 1.0) -> met"
    )
    assert lines[2].endswith("(target >= 0.98) -> NOT met")


def test_report_sizes_the_card_the_run_was_on(tmp_path: Path) -> None:
    """The model + GPU sizing follows the GPU the engine ran on (it sized an H200 for the H100 run of
    2026-12-05 and reported +101%); a card it cannot name is said, not sized as another."""
    from bench.vllm_gpu import report

    assert report.catalog_gpu("NVIDIA H100 80GB HBM3") == "h100"
    assert report.catalog_gpu("NVIDIA H100 PCIe") == "h100-pcie"
    assert report.catalog_gpu("NVIDIA H200") == "h200"
    assert report.catalog_gpu("NVIDIA L40S") is None
    doc = json.loads((REPO / "bench/results/vllm_gpu_h100_graphs_s11.json").read_text())
    first = doc["results"][0]
    assert first["name"] == "vllm-auto-graphs" and first["env"]["gpu"] == "NVIDIA H100 80GB HBM3"
    path = tmp_path / "graphs.json"
    path.write_text(json.dumps({"meta": doc["meta"], "results": [first]}))
    (row,) = report.capacity_rows(report.load([path]))
    assert row["size_errors"] == [] and row["tokens_equal"] and row["conc_equal"]
    assert abs(row["alone_err"]) < 0.02  # H100 from model + GPU: 55.09 GiB against 55.06 logged
    for gpu in ("NVIDIA L40S", None):  # a card the report does not map, a run that names none
        unknown = {**first, "env": {**first["env"], "gpu": gpu}}
        path.write_text(json.dumps({"meta": doc["meta"], "results": [unknown]}))
        (row,) = report.capacity_rows(report.load([path]))
        said = f"no kvplan GPU for {gpu!r} (the report maps H100 and H200)"
        assert row["size_errors"] == [said] and row["alone"] == {"error": said} and "alone_err" not in row
        (line,) = [t for t in report.targets([], [row]) if t.startswith("- capacity:")]
        assert line.endswith(f"not checked, kvplan size failed for {first['name']}")


def test_chat_prompts_are_token_ids_with_transformers_5() -> None:
    """The SmolLM2 set's prompts: the chat template's token ids (transformers 5's
    apply_chat_template(tokenize=True) returns a BatchEncoding; the H200 run of 2026-12-03 sent
    its keys as prompts)."""
    from transformers import AutoTokenizer

    from kvplan.checkpoint import ensure_smollm2_checkpoint

    tok = AutoTokenizer.from_pretrained(str(ensure_smollm2_checkpoint()))

    class _LLM:
        def get_tokenizer(self) -> object:
            return tok

    prompts = engine.chat_prompts(_LLM())
    assert len(prompts) >= 8
    for ids in prompts.values():
        assert ids and all(isinstance(t, int) and 0 <= t < tok.vocab_size for t in ids)
    first = next(iter(prompts.values()))
    assert tok.decode(first).rstrip().endswith("assistant")  # the generation prompt is there
