"""How fast decode kernels read a quantized KV cache, as measured: the one table of kernel speeds.

The planner's roofline (`kvplan plan --kernels`) and the simulated worker (`kvplan worker sim
--kernels`) both time decode steps with it, so a plan and its simulation assume the same kernels.
A figure is a KV read efficiency: the fraction of the format's byte-ratio speed-up over BF16
that the kernel reaches (1.0: decode time follows the bytes exactly).
"""

from __future__ import annotations

from kvplan.formats import get_format

KERNELS = ("kvplan", "measured", "vllm")  # whose decode kernels read the quantized cache

# vLLM 0.33's own quantized-KV decode kernels, relative to reading the same bytes as BF16 does
# (docs/facts.md §4, H100, 32 x 32K): speed vs SDPA bf16 0.92, fp8 0.80, int8 0.55, int4 0.40, divided
# by the byte ratio. `--kernels vllm` plans with these; the default plans with kvplan's kernels,
# which target the byte ratio (factor 1.0).
_MEASURED_AGAINST = "bf16"  # the speeds here are relative to a BF16 kernel


def byte_ratio(name: str, head_dim: int = 128) -> float:
    """Bytes a format reads per token-head relative to BF16, from kvplan.formats (fp8 0.5,
    int8 264/512, int4 136/512 at head_dim 128)."""
    base = get_format(_MEASURED_AGAINST).bytes_per_token_head(head_dim)
    return get_format(name).bytes_per_token_head(head_dim) / base


VLLM_KV_READ_EFFICIENCY = {
    name: byte_ratio(name) * speed / 0.92
    for name, speed in (("fp8_e4m3", 0.80), ("int8", 0.55), ("int4", 0.40))
}

# kvplan's own decode kernels as measured, per GPU: speed-up over kvplan's BF16 kernel at batch
# 32 x 32K (32 query / 8 KV heads, head_dim 128, page 16), the same run. `--kernels measured` plans
# with these; a GPU without figures is refused (Unsupported), never given another GPU's.
KVPLAN_MEASURED_SPEEDUP: dict[str, dict[str, float]] = {
    # the Triton kernels (bench/results/kernels_h100.md, 2026-11-23, Llama-3-8B shapes); the Gluon
    # kernel that has run 8-/4-bit decode since was never timed on an H100, so these understate it
    "h100": {
        "fp8_e4m3": 1.66,
        "int8": 1.72,
        "int8_hadamard": 1.62,
        "k8v4": 1.68,
        "int4": 1.81,
        "int4_hadamard": 1.74,
    },
    # the Gluon decode kernel as shipped (bench/results/kernels_h200_s10_verify.json, 2026-12-05)
    "h200": {
        "fp8_e4m3": 1.99,
        "int8": 1.91,
        "int8_hadamard": 1.90,
        "k8v4": 2.39,
        "int4": 3.32,
        "int4_hadamard": 3.23,
    },
}


def kv_read_efficiency(kernels: str, gpu: str) -> dict[str, float]:
    """Per-format KV read efficiency for `--kernels`: kvplan (byte-bound, 1.0), vllm, measured (on
    `gpu`, a kvplan.planner.gpus name; Unsupported where kvplan's kernels were not measured on it)."""
    if kernels == "vllm":
        return dict(VLLM_KV_READ_EFFICIENCY)
    if kernels == "measured":
        if gpu not in KVPLAN_MEASURED_SPEEDUP:
            from kvplan.errors import Unsupported

            raise Unsupported(
                f"--kernels measured: kvplan's kernels have no measured figures on {gpu} (only on "
                f"{', '.join(KVPLAN_MEASURED_SPEEDUP)}); plan with --kernels kvplan (the byte ratio) "
                "or --kernels vllm"
            )
        return {n: x * byte_ratio(n) for n, x in KVPLAN_MEASURED_SPEEDUP[gpu].items()}
    if kernels == "kvplan":
        return {}
    raise ValueError(f"kernels must be kvplan, measured or vllm, got {kernels!r}")
