"""One vLLM engine in this process, per `configs.EngineConfig`: start it, run its phases, write one
JSON result (rewritten after every phase, so a timeout keeps what finished).

    python3 -m bench.vllm_gpu.engine --config CFG.json --result OUT.json --ref-dir DIR

Started by `run.py`, one process per config. The engine runs in-process (no engine-core process:
one process, readable tracebacks) with vLLM's V1 model runner, torch sampling, `custom_ops: none`
and native IR ops, so no compiled vLLM code is needed (see README.md for why each setting).

Phases (each one optional, in this order):
- correct: 8 prompts of random tokens in two waves (the second shares prefixes with the first,
  and one prompt is longer than the step's token budget), so prefix caching, chunked prefill and
  mixed decode+prefill steps all run. The reference config decodes greedily and saves its tokens
  and full logits; every other config is teacher-forced along the reference's tokens (its logits
  are recorded, then all but the forced token are masked before sampling), so step k of both
  runs sees the same context and the logits compare step by step.
- prefill: real prefill of distinct random prompts, timed.
- decode: at each decode point, the context is written by vLLM's own DecodeBenchConnector (the
  scheduler allocates and block-tables the blocks, nothing is computed for them), after the whole
  cache was filled once with random K/V through each layer's own cache-write path (so every
  format's pages hold well-formed values of that format). Then steps are timed one by one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.vllm_gpu.configs import (
    DECODE_TOKENS,
    FILL_PREFIX,
    MEASURED_STEPS,
    MODELS,
    TAP_PREFIX,
    WARM_STEPS,
    DecodePoint,
    EngineConfig,
)

IR_NATIVE = {"rms_norm": ["native"], "fused_add_rms_norm": ["native"]}


def engine_env(cfg: EngineConfig) -> dict[str, str]:
    """Environment set before vLLM is imported."""
    env = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # engine core in this process
        "VLLM_USE_V2_MODEL_RUNNER": "0",  # V2 needs a compiled UVA op
        "VLLM_USE_FLASHINFER_SAMPLER": "0",  # FlashInfer is absent: torch sampling
    }
    if cfg.attention == "kvplan":
        assert cfg.kv_format is not None
        env["KVPLAN_KV_FORMAT"] = cfg.kv_format
    return env


def model_dir(cfg: EngineConfig, root: Path) -> str:
    """A model directory: the config's own, or one holding models/<name>.json as config.json."""
    if (MODELS / f"{cfg.model}.json").is_file():
        d = root / cfg.model
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text((MODELS / f"{cfg.model}.json").read_text())
        return str(d)
    if not Path(cfg.model, "config.json").is_file():
        raise FileNotFoundError(f"{cfg.name}: model {cfg.model!r} is not in models/ nor a model directory")
    return cfg.model


def engine_kwargs(cfg: EngineConfig, model: str) -> dict[str, Any]:
    """The LLM(...) arguments of a config."""
    kw: dict[str, Any] = dict(
        model=model, load_format=cfg.load_format, dtype=cfg.dtype, seed=cfg.seed,
        skip_tokenizer_init=cfg.prompts == "random", kv_cache_dtype=cfg.kv_cache_dtype,
        max_model_len=cfg.max_model_len, gpu_memory_utilization=cfg.gpu_memory_utilization,
        max_num_seqs=cfg.max_num_seqs,
        max_num_batched_tokens=cfg.max_num_batched_tokens, enable_prefix_caching=True,
        enable_chunked_prefill=True, ir_op_priority=IR_NATIVE,
        attention_backend="CUSTOM" if cfg.attention == "kvplan" else "TRITON_ATTN",
    )  # fmt: skip
    if cfg.block_size is not None:
        kw["block_size"] = cfg.block_size
    if cfg.cuda_graphs:  # full graphs of decode batches, no torch.compile (mode 0)
        kw["enforce_eager"] = False
        kw["compilation_config"] = {"mode": 0, "custom_ops": ["none"], "cudagraph_mode": "FULL_DECODE_ONLY"}
    else:
        kw["enforce_eager"] = True
        kw["compilation_config"] = {"custom_ops": ["none"]}
    if "decode" in cfg.phases:
        kw["kv_transfer_config"] = {
            "kv_connector": "KvplanDecodeBench",
            "kv_connector_module_path": "bench.vllm_gpu.fill_connector",
            "kv_role": "kv_both",
            # filled once at start (then by fill_kv below): no per-request fill inside timed steps
            "kv_connector_extra_config": {"startup_fill": True, "fill_mean": 0.0, "fill_std": 0.0},
        }
    kw.update(cfg.engine_args)
    return kw


# ---------------------------------------------------------------------------------------------
# inside the worker (in this process: collective_rpc calls the function directly)


def _runner(worker: Any) -> Any:
    return getattr(worker, "worker", worker).model_runner


def worker_memory(worker: Any) -> dict[str, Any]:
    """The worker's own memory accounting (bytes), for the sizing comparison."""
    w = getattr(worker, "worker", worker)
    names = ("requested_memory", "available_kv_cache_memory_bytes", "peak_activation_memory",
             "total_consumed", "cudagraph_memory_estimate")  # fmt: skip
    out = {n: int(getattr(w, n)) for n in names if isinstance(getattr(w, n, None), int | float)}
    runner = w.model_runner
    if isinstance(getattr(runner, "model_memory_usage", None), int | float):
        out["model_memory_usage"] = int(runner.model_memory_usage)
    return out


def attention_layers(worker: Any) -> dict[str, Any]:
    ctx = _runner(worker).vllm_config.compilation_config.static_forward_context
    return {n: layer for n, layer in ctx.items() if hasattr(layer, "impl") and hasattr(layer, "kv_cache")}


def _layer_cache(layer: Any) -> Any:
    kv = layer.kv_cache
    return kv[0] if isinstance(kv, list | tuple) else kv


def reinit_weights(worker: Any, seed: int) -> dict[str, Any]:
    """Redraw dummy weights as a freshly initialised transformer: N(0, 0.02) matrices, norm
    weights 1 (vLLM's dummy loader fills every tensor from one seed with +-1e-3, under which all
    logits are nearly equal and greedy tokens are ties). Same seed, same weights in every engine.
    Parameters a backend repacked out of reach (empty placeholders, as vLLM's CPU build does) are
    listed, not redrawn."""
    import zlib

    import torch

    model = _runner(worker).get_model()
    n, empty = 0, []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.is_floating_point() or p.numel() == 0:
                empty.append(name)
            elif p.dim() == 1:  # RMSNorm weights (Llama has no biases)
                p.fill_(1.0)
            else:
                g = torch.Generator(device=p.device).manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
                p.copy_(torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype).mul_(0.02))
            n += p.numel()
    return {"params": n, "not_redrawn": empty}


def fill_kv(worker: Any, seed: int, chunk_tokens: int = 1 << 16) -> dict[str, Any]:
    """Write random K/V (N(0, 1)) into every slot of every layer through the layer's own cache
    write (`impl.do_kv_cache_update`): each format quantizes them its own way."""
    import torch

    layers = attention_layers(worker)
    t0 = time.perf_counter()
    slots_total = 0
    gen = torch.Generator(device="cuda" if torch.cuda.is_available() else "cpu").manual_seed(seed)
    for layer in layers.values():
        cache = _layer_cache(layer)
        blocks, block_size = cache.shape[0], cache.shape[2]
        n = blocks * block_size
        hkv, d = layer.num_kv_heads, layer.head_size
        shape = (min(chunk_tokens, n), hkv, d)
        k = torch.randn(shape, generator=gen, device=cache.device, dtype=torch.float32).to(layer.dtype)
        v = torch.randn(shape, generator=gen, device=cache.device, dtype=torch.float32).to(layer.dtype)
        for s in range(0, n, chunk_tokens):
            slots = torch.arange(s, min(s + chunk_tokens, n), device=cache.device, dtype=torch.int64)
            t = slots.shape[0]
            layer.impl.do_kv_cache_update(layer, k[:t], v[:t], cache, slots)
        slots_total += n
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return {"layers": len(layers), "slots_per_layer": slots_total // max(len(layers), 1),
            "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip


class LogitsTap:
    """Records the logits of `corr.*` requests row by row and, when given forced tokens, masks
    every other token so greedy sampling follows them (teacher forcing through real decode).

    Rows of `compute_logits` follow the runner's input batch; a row whose request is still
    mid-prefill (chunked) is sampled and discarded by vLLM, so it is skipped here too.
    """

    def __init__(self, runner: Any, forced: dict[str, list[int]]) -> None:
        self.runner = runner
        self.forced = forced
        self.logits: dict[str, dict[int, Any]] = {}
        self._sched: Any = None
        self._orig_exec = runner.execute_model
        self._orig_logits = runner.model.compute_logits

        def execute_model(scheduler_output: Any, *a: Any, **k: Any) -> Any:
            self._sched = scheduler_output
            return self._orig_exec(scheduler_output, *a, **k)

        runner.execute_model = execute_model
        runner.model.compute_logits = self._compute_logits

    def remove(self) -> None:
        del self.runner.execute_model
        del self.runner.model.compute_logits

    def _compute_logits(self, hidden: Any) -> Any:
        import torch

        logits = self._orig_logits(hidden)
        if logits is None:
            return logits
        ib = self.runner.input_batch
        scheduled = self._sched.num_scheduled_tokens
        rows: list[tuple[int, str, int]] = []
        for i, rid in enumerate(ib.req_ids[: logits.shape[0]]):
            if not rid.startswith(TAP_PREFIX):
                continue
            key = rid.rsplit("-", 1)[0]  # vLLM appends "-<8 random characters>"
            pos = int(ib.num_computed_tokens_cpu[i]) + int(scheduled[rid]) - int(ib.num_prompt_tokens[i])
            if pos >= 0:
                rows.append((i, key, pos))
        if not rows:
            return logits
        idx = torch.tensor([r[0] for r in rows], device=logits.device)
        for (_, key, pos), row in zip(rows, logits[idx].float().cpu(), strict=True):
            self.logits.setdefault(key, {})[pos] = row
        forced = [(i, self.forced[key][pos]) for i, key, pos in rows if pos < len(self.forced.get(key, ()))]
        if not forced:
            return logits
        out = logits.clone()
        fi = torch.tensor([i for i, _ in forced], device=logits.device)
        ft = torch.tensor([t for _, t in forced], device=logits.device)
        out[fi] = float("-inf")
        out[fi, ft] = 0.0
        return out


# ---------------------------------------------------------------------------------------------
# driving the engine


def random_prompts(seed: int, vocab: int, lengths: list[int]) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    # ids below 1000 and the top of the vocabulary (special tokens) are avoided
    return [torch.randint(1000, vocab - 1000, (n,), generator=g).tolist() for n in lengths]


def correctness_prompts(seed: int, vocab: int, scale: float = 1.0) -> dict[str, list[int]]:
    """Two waves: A (4 prompts), then B, whose first three repeat a prefix of an A prompt (a
    prefix-cache hit that ends mid-block) and whose last is longer than the step's token budget
    (16384 tokens at scale 1)."""

    def n(x: int) -> int:
        return max(8, int(x * scale))

    a = random_prompts(seed, vocab, [n(1500), n(2100), n(2700), n(3300)])
    fresh = random_prompts(seed + 1, vocab, [n(700), n(900), n(300), n(20000)])
    b = [a[i][: n(1024) + 3 * i] + fresh[i] for i in range(3)] + [fresh[3]]
    return {
        **{f"{TAP_PREFIX}A{i}": p for i, p in enumerate(a)},
        **{f"{TAP_PREFIX}B{i}": p for i, p in enumerate(b)},
    }


def chat_prompts(llm: Any) -> dict[str, list[int]]:
    """The project's fixed chat prompts (tests/workers/workers_stack.py), with the model's template."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "workers"))
    from workers_stack import PROMPTS

    tok = llm.get_tokenizer()

    def ids(prompt: str) -> list[int]:
        # the template as text, then token ids: apply_chat_template(tokenize=True) returns a list
        # in transformers 4 and a BatchEncoding in 5 (the GPU image's), whose list() is its keys
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                       tokenize=False)  # fmt: skip
        return [int(t) for t in tok.encode(text, add_special_tokens=False)]

    return {f"{TAP_PREFIX}C{i:02d}": ids(p) for i, p in enumerate(PROMPTS)}


def _params(max_tokens: int) -> Any:
    from vllm import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, detokenize=False)


def add_requests(engine: Any, prompts: dict[str, list[int]], max_tokens: int) -> None:
    from vllm.inputs import TokensPrompt

    for rid, toks in prompts.items():
        engine.add_request(rid, TokensPrompt(prompt_token_ids=toks), _params(max_tokens))


def run_steps(
    engine: Any, step_hook: Callable[[int], Any] | None = None
) -> tuple[list[dict[str, Any]], dict]:
    """Step until every request finished: per step its wall time and tokens emitted; the final
    token ids of each request."""
    steps: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        hook = step_hook(len(steps)) if step_hook else None
        t0 = time.perf_counter()
        with hook if hook is not None else _nothing():
            outs = engine.step()
        dt = time.perf_counter() - t0
        emitted = 0
        for o in outs:
            ids = list(o.outputs[0].token_ids)
            emitted += len(ids) - seen.get(o.request_id, 0)
            seen[o.request_id] = len(ids)
            tokens[o.request_id] = ids
        steps.append({"s": dt, "emitted": emitted, "profiled": hook is not None})
    return steps, tokens


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def phase_correct(llm: Any, cfg: EngineConfig, ref_file: Path) -> dict[str, Any]:
    import torch

    vocab = llm.llm_engine.model_config.get_vocab_size()
    prompts = (
        chat_prompts(llm)
        if cfg.prompts == "chat"
        else correctness_prompts(cfg.seed, vocab, cfg.correct_scale)
    )
    ref = None if cfg.reference or not ref_file.is_file() else torch.load(ref_file)
    forced = ref["tokens"] if ref else {}
    tap = llm.collective_rpc(lambda w: LogitsTap(_runner(w), forced))[0]
    engine = llm.llm_engine
    t0 = time.perf_counter()
    waves = [[k for k in prompts if ".C" in k or ".A" in k], [k for k in prompts if ".B" in k]]
    tokens: dict[str, list[int]] = {}
    steps = 0
    for wave in (w for w in waves if w):
        add_requests(engine, {k: prompts[k] for k in wave}, cfg.correct_tokens)
        wave_steps, wave_tokens = run_steps(engine)
        steps += len(wave_steps)
        tokens.update(wave_tokens)
    tap.remove()
    seconds = time.perf_counter() - t0
    n = cfg.correct_tokens
    logits = {k: torch.stack([rows[p] for p in range(n)]) for k, rows in tap.logits.items() if len(rows) >= n}
    missing = sorted(set(prompts) - set(logits))
    out: dict[str, Any] = {"prompts": len(prompts), "tokens_per_prompt": n, "steps": steps,
                           "seconds": round(seconds, 2), "missing_logits": missing,
                           "finite": all(bool(torch.isfinite(t).all()) for t in logits.values())}  # fmt: skip
    if cfg.reference:
        torch.save({"tokens": {k: tokens[k] for k in prompts}, "logits": logits}, ref_file)
        out["role"] = "reference"
        return out
    if ref is None:
        out["role"] = "no reference in this set"
        return out
    followed = all(tokens.get(k) == ref["tokens"][k] for k in prompts)  # the forcing took hold
    rel: list[float] = []
    flips: list[dict[str, Any]] = []
    agree = total = 0
    norm = torch.linalg.vector_norm
    for k in prompts:
        mine, theirs = logits.get(k), ref["logits"].get(k)
        if mine is None or theirs is None:
            continue
        rel.extend((norm(mine - theirs, dim=-1) / norm(theirs, dim=-1)).tolist())
        same = mine.argmax(-1) == theirs.argmax(-1)
        agree += int(same.sum())
        total += mine.shape[0]
        top2 = theirs.float().topk(2, dim=-1).values
        gap = (mine.float() - theirs.float()).abs().amax(-1)
        for i in (~same).nonzero().flatten().tolist():  # a flip: the reference's margin vs the noise
            flips.append(
                {
                    "key": k,
                    "pos": i,
                    "ref_margin": float(top2[i, 0] - top2[i, 1]),
                    "max_abs_diff": float(gap[i]),
                }
            )
    out.update(
        role="teacher-forced on the reference's tokens",
        followed_forced_tokens=followed,
        rel_err_max=max(rel, default=math.nan),
        rel_err_mean=statistics.fmean(rel) if rel else math.nan,
        prefill_logits_rel_err_max=max(rel[::n], default=math.nan),  # position 0: after prefill
        argmax_agreement=agree / total if total else math.nan,
        positions=total,
        # where the greedy token differs: the reference's top-1 - top-2 logit margin and the largest
        # logit difference there; a flip whose margin is below twice that difference is a near-tie
        # that two correct kernels' rounding decides either way
        flips=flips,
        flips_near_tie=sum(f["ref_margin"] <= 2 * f["max_abs_diff"] for f in flips),
    )
    return out


def phase_prefill(llm: Any, cfg: EngineConfig) -> dict[str, Any]:
    vocab = llm.llm_engine.model_config.get_vocab_size()
    lens = [cfg.prefill_len] * cfg.prefill_prompts
    prompts = {f"prefill.{i}": p for i, p in enumerate(random_prompts(cfg.seed + 7, vocab, lens))}
    add_requests(llm.llm_engine, prompts, 1)
    t0 = time.perf_counter()
    steps, _ = run_steps(llm.llm_engine)
    s = time.perf_counter() - t0
    return {"prompts": cfg.prefill_prompts, "tokens_each": cfg.prefill_len, "steps": len(steps),
            "seconds": round(s, 3), "tokens_per_s": round(sum(lens) / s, 1)}  # fmt: skip


def point_batch(point: DecodePoint, num_gpu_blocks: int, block_size: int, max_num_seqs: int) -> int:
    """Sequences at a point: its own, or all the cache holds (block 0 is vLLM's null block)."""
    if point.batch is not None:
        return point.batch
    per_seq = -(-(point.context + DECODE_TOKENS) // block_size)
    return min((num_gpu_blocks - 1) // per_seq, max_num_seqs)


def phase_decode(llm: Any, cfg: EngineConfig, info: dict[str, Any]) -> dict[str, Any]:
    engine = llm.llm_engine
    out: dict[str, Any] = {"fill": llm.collective_rpc(lambda w: fill_kv(w, cfg.seed))[0]}
    vocab = engine.model_config.get_vocab_size()
    for point in cfg.points:
        b = point_batch(point, info["num_gpu_blocks"], info["block_size"], cfg.max_num_seqs)
        prompts = random_prompts(cfg.seed + 11 + len(out), vocab, [point.context] * b)
        add_requests(
            engine, {f"{FILL_PREFIX}{point.name}.{i}": p for i, p in enumerate(prompts)}, DECODE_TOKENS
        )
        profile: dict[str, Any] = {}
        hook = _profile_hook(profile) if cfg.profile_point == point.name else None
        steps, _ = run_steps(engine, hook)
        out[point.name] = decode_summary(point, b, steps)
        if profile:
            out[point.name]["profile"] = profile
    return out


def decode_summary(point: DecodePoint, batch: int, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Steady decode: steps after the warm-up in which every sequence emitted its token."""
    full = [s["s"] for s in steps[WARM_STEPS:] if s["emitted"] == batch]
    plain = [s["s"] for s in steps[WARM_STEPS:] if s["emitted"] == batch and not s.get("profiled")]
    step_s = statistics.median(full) if full else math.nan
    return {
        "context": point.context, "batch": batch, "steps": len(steps), "full_steps": len(full),
        "first_step_s": round(steps[0]["s"], 4) if steps else None,
        "step_ms": round(step_s * 1e3, 3), "step_ms_min": round(min(full) * 1e3, 3) if full else None,
        "step_ms_max": round(max(full) * 1e3, 3) if full else None,
        "tokens_per_s": round(batch / step_s, 1) if full else None,
        # the mean too: on the H200 single steps ranged 9 ms..1.2 s around a 42 ms median (a step
        # can return before its GPU work ends), so tokens over the measured steps' total time
        "step_ms_mean": round(statistics.fmean(plain) * 1e3, 3) if plain else None,
        "tokens_per_s_mean": round(batch * len(plain) / sum(plain), 1) if plain else None,
        "complete": len(full) >= MEASURED_STEPS - 2,  # fewer: preemption or stalls broke the batch
    }  # fmt: skip


def _profile_hook(into: dict[str, Any]) -> Callable[[int], Any]:
    """Profile one steady decode step (the third after the warm-up)."""
    return lambda i: _profiled(into) if i == WARM_STEPS + 2 else None


@contextmanager
def _profiled(into: dict[str, Any]) -> Iterator[None]:
    """One engine step under torch.profiler: GPU kernel time against the step's wall time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        yield
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    kernels = [
        e for e in prof.key_averages() if e.device_type.name == "CUDA" and e.self_device_time_total > 0
    ]
    gpu_us = sum(e.self_device_time_total for e in kernels)
    cpu_ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    into.update(
        wall_ms=round(wall * 1e3, 3), gpu_kernel_ms=round(gpu_us / 1e3, 3),
        gpu_busy_share=round(gpu_us / 1e6 / wall, 3) if wall else None,
        kernel_launches=sum(e.count for e in kernels),
        top_kernels=[[e.key[:80], round(e.self_device_time_total / 1e3, 3), e.count]
                     for e in sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:10]],
        top_cpu_ops=[[e.key[:80], round(e.self_cpu_time_total / 1e3, 3), e.count] for e in cpu_ops[:10]],
    )  # fmt: skip


def environment() -> dict[str, Any]:
    import torch
    import triton
    import vllm

    env: dict[str, Any] = {"vllm": vllm.__version__, "torch": torch.__version__, "triton": triton.__version__,
                           "python": sys.version.split()[0]}  # fmt: skip
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        env.update(gpu=torch.cuda.get_device_name(), gpu_total_bytes=total, gpu_free_bytes_at_start=free)
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--result", type=Path, required=True)
    ap.add_argument("--ref-dir", type=Path, required=True, help="correctness reference files of the set")
    ap.add_argument("--models-dir", type=Path, default=Path("/tmp/kvplan-models"))
    args = ap.parse_args(argv)
    cfg = EngineConfig.from_json(args.config.read_text())
    os.environ.update(engine_env(cfg))
    result: dict[str, Any] = {"name": cfg.name, "label": cfg.label, "status": "starting", "phases": {}}

    def save() -> None:
        args.result.write_text(json.dumps(result, indent=1, default=str))

    try:
        result["env"] = environment()
        save()
        from vllm import LLM

        t0 = time.perf_counter()
        llm = LLM(**engine_kwargs(cfg, model_dir(cfg, args.models_dir)))
        result["start_s"] = round(time.perf_counter() - t0, 2)
        cache = llm.llm_engine.vllm_config.cache_config
        info = {"num_gpu_blocks": int(cache.num_gpu_blocks), "block_size": int(cache.block_size),
                "max_model_len": int(llm.llm_engine.model_config.max_model_len),
                "memory": llm.collective_rpc(worker_memory)[0]}  # fmt: skip
        if cfg.load_format == "dummy":
            info["reinit"] = llm.collective_rpc(lambda w: reinit_weights(w, cfg.seed))[0]
        result["engine"] = info
        result["status"] = "running"
        save()
        args.ref_dir.mkdir(parents=True, exist_ok=True)
        phases: dict[str, Callable[[], dict[str, Any]]] = {
            "correct": lambda: phase_correct(llm, cfg, args.ref_dir / "reference.pt"),
            "prefill": lambda: phase_prefill(llm, cfg),
            "decode": lambda: phase_decode(llm, cfg, info),
        }
        failed = []
        for name in cfg.phases:  # a phase that fails is recorded; the next ones still run
            t0 = time.perf_counter()
            try:
                result["phases"][name] = phases[name]()
            except Exception as exc:
                failed.append(name)
                result["phases"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                          "traceback": traceback.format_exc()[-3000:]}  # fmt: skip
            result["phases"][name]["phase_s"] = round(time.perf_counter() - t0, 2)
            save()
        result["status"] = "failed" if failed else "ok"
        if failed:
            result["error"] = "; ".join(f"{n}: {result['phases'][n]['error']}" for n in failed)[:1000]
    except Exception as exc:  # the result says what failed; the runner keeps the log
        result["status"] = "failed"
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-4000:]
    save()
    print(f"ENGINE_RESULT {cfg.name} {result['status']}", flush=True)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
