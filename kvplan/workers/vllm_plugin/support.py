"""Which kvplan formats the vLLM plugin can serve (torch-free: `kvplan workers up` checks plans
with it before starting anything)."""

from __future__ import annotations

from kvplan.formats import Granularity, KVFormat, get_format

# The torch reference and the Triton kernels handle these head sizes and pages (vLLM's block).
SUPPORTED_HEAD_DIMS = (64, 128, 256)
SUPPORTED_BLOCK_SIZES = (16, 32, 64, 128)


def unsupported_reason(fmt: KVFormat) -> str | None:
    """Why the plugin cannot serve `fmt`, or None when it can.

    A static per-tensor scale (fp8) is the attention layer's own `_k_scale`/`_v_scale`, which
    vLLM keeps for every layer; a per-head one has no such home.
    """
    for side in (fmt.k, fmt.v):
        if side.granularity is Granularity.PER_CHANNEL:
            return f"{fmt.name} stores keys per channel, which needs staging state vLLM does not keep"
        if side.granularity is Granularity.PER_HEAD:
            return f"{fmt.name} uses static per-head scales: serve it with vLLM's native --kv-cache-dtype"
    return None


def plugin_format(name: str) -> KVFormat:
    """The format the plugin serves for `name`; ValueError naming the reason otherwise."""
    fmt = get_format(name)  # UnknownFormat is a ValueError too
    reason = unsupported_reason(fmt)
    if reason:
        raise ValueError(f"kvplan plugin: {reason}")
    return fmt
