"""kvplan's memory model against vLLM start-up logs that users posted (bench/planner_vllm_logs.yaml).

Two checks per row, reported honestly whether they pass or miss:
1. Given vLLM's logged "Available KV cache memory", do kvplan's token count, concurrency, block
   count and fit verdict equal what vLLM logged? vLLM prints GiB rounded to 2 decimals, so a
   row is also checked against every byte count that rounds to the logged figure.
2. From the model and GPU alone (no measured terms), is the available KV memory within 5%? Each row
   is sized with the flags the log shows (its --vllm-version, TP/PP, utilisation, batch limits, and
   --flashinfer-sampler where vLLM logged "Using FlashInfer for top-p & top-k sampling").

    .venv/bin/python bench/planner_vllm_logs.py

Writes bench/results/planner_vllm_logs.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from kvplan.errors import InputError, Unsupported
from kvplan.formats import VLLM_KV_DTYPE_FORMAT, get_format
from kvplan.planner.gpus import GIB, get_gpu
from kvplan.planner.memory import Capacity, kv_capacity
from kvplan.planner.models import get_model
from kvplan.planner.vllm_versions import get_version

ROOT = Path(__file__).resolve().parents[1]
# a row's kv_dtype: vLLM's --kv-cache-dtype, or "bf16" where the log shows auto on a bf16 model
KV_FORMAT = {"bf16": "bf16", **VLLM_KV_DTYPE_FORMAT}


@dataclass
class Check:
    row: str
    what: str
    logged: str
    kvplan: str
    verdict: str


SAMPLERS = (None, "flashinfer", "pytorch")  # what the log shows the server sampled with (None: not shown)


def check_row(row: dict[str, Any]) -> None:
    """Refuse (ValueError naming the row and field) a row whose enumerated fields this bench would
    otherwise read as a default: a misspelt sampler would size it as PyTorch's, silently."""
    rid = row.get("id", "?")
    if row.get("sampler") not in SAMPLERS:
        raise ValueError(f"row {rid}: sampler {row.get('sampler')!r} must be flashinfer, pytorch or absent")
    if row.get("kv_dtype") not in KV_FORMAT:
        raise ValueError(f"row {rid}: kv_dtype {row.get('kv_dtype')!r} must be one of {', '.join(KV_FORMAT)}")
    try:
        get_version(str(row.get("version")))
    except InputError as exc:
        raise ValueError(f"row {rid}: {exc}") from None


def _capacity(row: dict[str, Any], **kw: Any) -> Capacity:
    """kvplan for a row, as `kvplan size --vllm-version <row's release>` would size it."""
    model = get_model(row["model"])
    gpu, _ = get_gpu(row.get("gpu") or "h100")
    args: dict[str, Any] = dict(
        max_model_len=row.get("max_model_len") or 8192,
        tensor_parallel=row.get("tensor_parallel", 1),
        pipeline_parallel=row.get("pipeline_parallel", 1),
        max_num_seqs=row.get("max_num_seqs"),
        enforce_eager=bool(row.get("enforce_eager", False)),
        flashinfer_sampler=row.get("sampler") == "flashinfer",
        gpu_memory_utilization=row.get("gpu_memory_utilization"),
        weight_dtype=row.get("weight_dtype", "auto"),
        vllm_version=row["version"],
        max_num_batched_tokens=row.get("max_num_batched_tokens"),
    )
    if row.get("gpu_memory_gib"):
        args["gpu_memory_bytes"] = round(row["gpu_memory_gib"] * GIB)
    args.update(kw)
    return kv_capacity(model, gpu, get_format(KV_FORMAT[row["kv_dtype"]]), **args)


def _refused(row: dict[str, Any]) -> str | None:
    """kvplan's one-line refusal (exit 2) for a row's model, or None when it sizes it."""
    try:
        get_model(row["model"])
    except Unsupported as exc:
        return str(exc).split(";")[0]
    return None


def _given_available(row: dict[str, Any]) -> list[Check]:
    logged = row["logged"]
    gib = logged["available_kv_gib"]
    if gib <= 0:  # nothing left for KV: only the model-alone estimate says anything
        return []
    refused = _refused(row)
    if refused:
        return [Check(row["id"], "any figure", "logged", f"exit 2: {refused}", "MISS (kvplan refuses)")]
    at = _capacity(row, kv_memory_bytes=round(gib * GIB))
    lo = _capacity(row, kv_memory_bytes=round((gib - 0.005) * GIB))
    hi = _capacity(row, kv_memory_bytes=round((gib + 0.005) * GIB) - 1)
    checks = []

    def add(what: str, want: Any, got: Any, lo_v: Any, hi_v: Any, fmt: str = "{:,}") -> None:
        exact = got == want
        within = lo_v <= want <= hi_v
        verdict = "exact" if exact else ("within GiB rounding" if within else "MISS")
        rng = "" if exact else f" (range {fmt.format(lo_v)}..{fmt.format(hi_v)})"
        checks.append(Check(row["id"], what, fmt.format(want), fmt.format(got) + rng, verdict))

    v0 = row["version"] == "0.6"
    if "kv_tokens" in logged and not v0:
        add("KV cache size (tokens)", logged["kv_tokens"], at.kv_tokens, lo.kv_tokens, hi.kv_tokens)
    if "kv_tokens" in logged and v0:
        add("max tokens in KV (blocks x 16)", logged["kv_tokens"], at.num_blocks * 16, lo.num_blocks * 16,
            hi.num_blocks * 16)  # fmt: skip
    if "kv_tokens_approx" in logged:
        want = logged["kv_tokens_approx"]
        err = (at.kv_tokens - want) / want
        got = f"{at.kv_tokens:,} ({err:+.2%})"
        checks.append(Check(row["id"], "KV tokens (published ≈)", f"≈{want:,}", got,
                            "within 0.1%" if abs(err) < 0.001 else "MISS"))  # fmt: skip
    if "num_blocks" in logged:
        add("GPU blocks", logged["num_blocks"], at.num_blocks, lo.num_blocks, hi.num_blocks)
    if "max_concurrency" in logged:
        add("max concurrency (x)", logged["max_concurrency"], round(at.max_concurrency, 2),
            round(lo.max_concurrency, 2), round(hi.max_concurrency, 2), "{:.2f}")  # fmt: skip
    if "max_model_len_that_fits" in logged:
        add("estimated max model len", logged["max_model_len_that_fits"], at.max_model_len_that_fits,
            lo.max_model_len_that_fits, hi.max_model_len_that_fits)  # fmt: skip
    if "kv_needed_gib" in logged:
        add("KV needed for one request (GiB)", logged["kv_needed_gib"], round(at.kv_bytes_needed / GIB, 2),
            round(lo.kv_bytes_needed / GIB, 2), round(hi.kv_bytes_needed / GIB, 2), "{:.2f}")  # fmt: skip
    if "fits" in logged:
        add("starts (one max_model_len request fits)", logged["fits"], at.fits, lo.fits, hi.fits, "{}")
    return checks


def _model_only(row: dict[str, Any]) -> Check | None:
    if not row.get("gpu"):
        return None
    refused = _refused(row)
    if refused:
        want = row["logged"]["available_kv_gib"]
        return Check(row["id"], f"available KV from model + GPU alone [exit 2: {refused}]",
                     f"{want:.2f} GiB", "none", "MISS (kvplan refuses)")  # fmt: skip
    cap = _capacity(row)
    want = row["logged"]["available_kv_gib"]
    got = cap.available_kv_bytes / GIB
    err = (got - want) / abs(want)
    logged = row["logged"]
    terms = (
        f"weights {cap.weights_bytes / GIB:.2f}"
        + (f" (logged {logged['weights_gib']:.2f})" if "weights_gib" in logged else "")
        + f", activation {cap.activation_bytes / GIB:.2f}"
        + (f" (logged {logged['activation_gib']:.2f})" if "activation_gib" in logged else "")
        + f", non-torch {cap.non_torch_bytes / GIB:.2f}, graphs {cap.cuda_graph_bytes / GIB:.2f}"
        + f"; --vllm-version {row['version']}"
        + (" --flashinfer-sampler" if row.get("sampler") == "flashinfer" else "")
    )
    verdict = ("within 5%" if abs(err) <= 0.05 else "MISS") + (" (calibration row)" if "calibrated" in
                                                                 row.get("notes", "") else "")  # fmt: skip
    return Check(row["id"], f"available KV from model + GPU alone [{terms}]", f"{want:.2f} GiB",
                 f"{got:.2f} GiB ({err:+.1%})", verdict)  # fmt: skip


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    data = yaml.safe_load((ROOT / "bench" / "planner_vllm_logs.yaml").read_text())
    for row in data["rows"]:
        try:
            check_row(row)
        except ValueError as exc:
            print(f"error: bench/planner_vllm_logs.yaml: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    given: list[Check] = []
    alone: list[Check] = []
    for row in data["rows"]:
        given += _given_available(row)
        c = _model_only(row)
        if c:
            alone.append(c)
    sources = {r["id"]: r["source"] for r in data["rows"]}
    lines = [
        "# kvplan's memory model against real vLLM start-up logs",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; device: this machine "
        f"({os.cpu_count()} cores, CPU only: arithmetic, no GPU needed)",
        "- command: `.venv/bin/python bench/planner_vllm_logs.py` (rows: `bench/planner_vllm_logs.yaml`)",
        f"- {len(data['rows'])} rows from {len({s.split(' ')[0] for s in sources.values()})} sources; "
        "vLLM prints GiB to 2 decimals, so 'within GiB rounding' means some byte count that vLLM would print "
        "as the logged GiB gives exactly the logged figure",
        "",
        "## 1. Given vLLM's logged available KV memory",
        "",
        "| row | figure | vLLM logged | kvplan | verdict |",
        "|---|---|---|---|---|",
        *(f"| {c.row} | {c.what} | {c.logged} | {c.kvplan} | {c.verdict} |" for c in given),
        "",
        "## 2. From the model and GPU alone (target: within 5%)",
        "",
        "| row | kvplan's terms (GiB per GPU) | vLLM logged | kvplan | verdict |",
        "|---|---|---|---|---|",
        *(
            f"| {c.row} | {c.what.split('[', 1)[1].rstrip(']')} | {c.logged} | {c.kvplan} | {c.verdict} |"
            for c in alone
        ),
        "",
        "## Misses and their causes",
        "",
        *(f"- {r['id']}: {r['miss_cause']}" for r in data["rows"] if r.get("miss_cause")),
        "",
        "## Sources",
        "",
        *(f"- {k}: {v}" for k, v in sources.items()),
        "",
    ]
    misses_given = sum(c.verdict.startswith("MISS") for c in given)
    misses_alone = sum(c.verdict.startswith("MISS") for c in alone)
    rows_given = {c.row for c in given}
    rows_exact = rows_given - {c.row for c in given if c.verdict.startswith("MISS")}
    n_rows, n_gpu = len(data["rows"]), len(alone)
    share = (len(alone) - misses_alone) / n_gpu if n_gpu else 0.0

    def met(ok: bool) -> str:
        return "met" if ok else "not met"

    target = [
        "## Targets",
        "",
        "| target | figure | verdict |",
        "|---|---|---|",
        f"| collected public logs >= 20 | {n_rows} rows ({n_gpu} name their GPU) | {met(n_rows >= 20)} |",
        "| given the logged KV memory, tokens / concurrency / blocks / fit exact (within the GiB rounding) "
        f"on every log | {len(given) - misses_given}/{len(given)} figures; "
        f"{len(rows_exact)}/{len(rows_given)} rows with every figure right | {met(misses_given == 0)} |",
        f"| from model + GPU alone, available KV within 5% on >= 85% of logs (each at its --vllm-version) | "
        f"{n_gpu - misses_alone}/{n_gpu} rows that name their GPU ({share:.0%}); "
        f"{n_gpu - misses_alone}/{n_rows} of all rows ({(n_gpu - misses_alone) / n_rows:.0%}: "
        f"{n_rows - n_gpu} name no GPU) | {met(share >= 0.85)} |",
        "",
    ]
    at = lines.index("## 1. Given vLLM's logged available KV memory")
    lines[at:at] = target
    lines.append(
        f"Summary: given the logged memory, {len(given) - misses_given}/{len(given)} figures match (exact or "
        f"within the log's GiB rounding); from model + GPU alone, "
        f"{len(alone) - misses_alone}/{len(alone)} rows "
        "within 5%."
    )
    dest = ROOT / "bench" / "results" / "planner_vllm_logs.md"
    dest.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
