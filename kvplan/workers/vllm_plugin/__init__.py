"""kvplan's vLLM plugin: makes vLLM store the KV cache in a kvplan format and run kvplan's kernels.

Loaded by vLLM in every process (API server, engine core, workers) through the
`vllm.general_plugins` entry point, possibly more than once, so `register` is idempotent.
It does nothing unless `KVPLAN_KV_FORMAT` names a format: one vLLM environment then serves both
plain pools (vLLM's own attention) and kvplan pools. vLLM 0.32 has no way to register a new
`--kv-cache-dtype` name, so the format travels in that environment variable and vLLM runs with
`--kv-cache-dtype auto`.

On CPU the platform always picks the `CPU_ATTN` backend, so the plugin overrides that member;
on CUDA it registers `CUSTOM`, selected with `--attention-backend CUSTOM`.
"""

from __future__ import annotations

import os

from kvplan.vllm_command import FORMAT_ENV

BACKEND_PATH = "kvplan.workers.vllm_plugin.backend.KvplanAttentionBackend"
# The backend registry, customize_spec and state_content_bytes are marked temporary upstream.
SUPPORTED_VLLM = ((0, 32), (0, 33))  # inclusive major.minor range

_registered = False


def configured_format_name() -> str | None:
    name = os.environ.get(FORMAT_ENV, "").strip()
    return name or None


def check_vllm_version(version: str) -> None:
    """Raise RuntimeError when vLLM's version is outside the range this plugin was written for."""
    lo, hi = SUPPORTED_VLLM
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError:
        raise RuntimeError(f"kvplan plugin: cannot parse vLLM version {version!r}") from None
    if not lo <= (major, minor) <= hi:
        raise RuntimeError(
            f"kvplan's vLLM plugin supports vLLM {lo[0]}.{lo[1]} to {hi[0]}.{hi[1]}, found {version}: "
            f"its attention-backend API changes between releases. Install vllm 0.32/0.33 or unset "
            f"{FORMAT_ENV}."
        )


def backend_member_name() -> str:
    """The vLLM backend-enum member kvplan's backend replaces on this platform."""
    from vllm.platforms import current_platform

    return "CPU_ATTN" if current_platform.is_cpu() else "CUSTOM"


def register() -> None:
    """Entry point (`vllm.general_plugins`): register kvplan's backend when a format is configured."""
    global _registered
    name = configured_format_name()
    if name is None or _registered:
        return
    import vllm
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    check_vllm_version(vllm.__version__)
    from kvplan.workers.vllm_plugin.support import plugin_format

    plugin_format(name)  # fails here, at load, on a format the plugin cannot serve
    register_backend(AttentionBackendEnum[backend_member_name()], BACKEND_PATH)
    _registered = True
