"""What changes in vLLM's memory model and start-up log lines from one release to the next.

Each flag was read in the released source of the versions it names (wheels from the Python index,
0.10.2 ... 0.34.0); the function or setting is cited. `--vllm-version X.Y` picks the row; the
JSON report lists the choices as `assumptions`.

- default gpu_memory_utilization 0.9, 0.92 from 0.20 (vllm/config/cache.py CacheConfig)
- CUDA-graph memory subtracted from the KV budget from 0.20; 0.18-0.19 estimate it with the env
  switch off (v1/worker/gpu_worker.py determine_available_memory,
  VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS)
- "GPU KV cache size": num_blocks // groups x block size up to 0.19
  (v1/core/kv_cache_utils.py _report_kv_cache_config), int(concurrency x max_model_len) from 0.20
  (get_kv_cache_capacity)
- sliding/chunked layers hold max_num_batched_tokens in flight up to 0.25, max_in_flight_tokens
  (2 batches with async scheduling) from 0.26 (v1/kv_cache_interface.py SlidingWindowSpec)
- the start-up check counts padded groups from 0.14 (_max_memory_usage_bytes_from_groups) and
  holds back the null block from 0.30 (get_kv_cache_configs: "Reserve the null block")
- chunked local attention keeps the hybrid manager from 0.14
  (VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE default 1)
- a Mamba state takes 2 blocks per request (prefix-caching "align" mode) from 0.15
  (MambaSpec.max_memory_usage_bytes)
- Mamba2 mixers hold one more state block (a prefill checkpoint) from 0.32
  (mamba_mixer2.py MambaMixer2.get_kv_cache_spec)
- async scheduling on by default from 0.14 (config/vllm.py VllmConfig.__post_init__)
- >= 160 GiB cards get scheduler defaults 16384 / 1024 from 0.28 (engine/arg_utils.py
  get_batch_defaults)
- bitsandbytes checkpoints load up to 0.28 (model_executor/layers/quantization/__init__.py)
"""

from __future__ import annotations

from dataclasses import dataclass

from kvplan.errors import InputError

# 0.6-0.7 ran the V0 engine by default (V1 became the default in 0.8): one profile batch of
# max(max_model_len, 2048) tokens, "# GPU blocks" instead of the V1 lines.
SUPPORTED = tuple(f"0.{m}" for m in range(6, 35))
DEFAULT_VERSION = "0.33"  # the newest release kvplan follows (0.34 is read too, not yet the default)


@dataclass(frozen=True)
class VllmVersion:
    name: str
    minor: int

    @property
    def engine_v0(self) -> bool:
        return self.minor < 8

    @property
    def default_utilization(self) -> float:
        return 0.92 if self.minor >= 20 else 0.9

    @property
    def subtracts_cuda_graphs(self) -> bool:
        return self.minor >= 20

    @property
    def tokens_from_concurrency(self) -> bool:
        return self.minor >= 20

    @property
    def in_flight_batches(self) -> bool:
        """Windowed layers reserve max_in_flight_tokens (async: 2 batches), not one batch."""
        return self.minor >= 26

    @property
    def needed_from_groups(self) -> bool:
        return self.minor >= 14

    @property
    def null_block_in_check(self) -> bool:
        return self.minor >= 30

    @property
    def chunked_local_hybrid(self) -> bool:
        return self.minor >= 14

    @property
    def state_blocks(self) -> int:
        return 2 if self.minor >= 15 else 1

    @property
    def mamba2_checkpoint_block(self) -> bool:
        return self.minor >= 32

    @property
    def gdn_prefill_checkpoints(self) -> bool:
        """0.33+: with FlashInfer's GDN prefill (CUDA, see `gdn_flashinfer_prefill`) and prefix
        caching, Gated DeltaNet layers export prefill checkpoints: attention blocks align to 64
        tokens and each GDN layer holds one more state block per request."""
        return self.minor >= 33

    @property
    def async_scheduling(self) -> bool:
        return self.minor >= 14

    @property
    def big_gpu_defaults(self) -> bool:
        return self.minor >= 28

    def assumptions(self) -> list[str]:
        """What this version's memory model does, in words, for the JSON report."""
        return [
            f"vLLM {self.name}"
            + (" (V0 engine)" if self.engine_v0 else "")
            + f": default gpu_memory_utilization {self.default_utilization}",
            "CUDA-graph memory "
            + ("subtracted from" if self.subtracts_cuda_graphs else "not part of")
            + " the KV budget",
            "GPU KV cache size logged as "
            + (
                "int(concurrency x max_model_len)"
                if self.tokens_from_concurrency
                else "blocks // groups x block size"
            ),
            "windowed layers hold "
            + ("max_in_flight_tokens" if self.in_flight_batches else "max_num_batched_tokens")
            + " in flight",
            "start-up check "
            + ("holds back the null block" if self.null_block_in_check else "uses all blocks"),
        ]


def get_version(text: str | None) -> VllmVersion:
    """`0.33`, `0.33.0`, `v0.11.2` -> the row for that minor release."""
    if text is None or text.strip() in ("", "latest"):
        text = DEFAULT_VERSION
    raw = text.strip().lower().removeprefix("v")
    parts = raw.split(".")
    try:
        major, minor = int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        raise InputError(f"bad --vllm-version {text!r}: use a release like 0.33 or 0.11.2") from None
    name = f"{major}.{minor}"
    if name not in SUPPORTED:
        raise InputError(
            f"--vllm-version {text!r} is not modelled; kvplan follows vLLM {SUPPORTED[0]} to {SUPPORTED[-1]}"
        )
    return VllmVersion(name, minor)
