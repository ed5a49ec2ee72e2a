"""The simulated worker's `/metrics`: vLLM's names, types, labels and buckets.

Names come from `kvplan.metric_names.vllm`. Like vLLM, every series carries `model_name` and `engine`
("0" for the single engine core), except `vllm:cache_config_info`, whose labels are the cache
config fields plus `engine` (vLLM emulates a Prometheus Info with a gauge set to 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kvplan.metric_names import vllm as vm

ENGINE_INDEX = "0"
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")  # vLLM's FinishReason


@dataclass(frozen=True)
class CacheInfo:
    num_gpu_blocks: int
    block_size: int
    cache_dtype: str
    gpu_memory_utilization: float
    enable_prefix_caching: bool = True
    kv_cache_size_tokens: int | None = None  # vLLM's "GPU KV cache size: N tokens"
    kv_cache_max_concurrency: float | None = None  # "Maximum concurrency for L tokens per request"

    def labels(self) -> dict[str, str]:
        """A subset of vLLM 0.32's `CacheConfig` fields (all stringified, as vLLM does)."""
        return {
            "block_size": str(self.block_size),
            "cache_dtype": self.cache_dtype,
            "enable_prefix_caching": str(self.enable_prefix_caching),
            "gpu_memory_utilization": str(self.gpu_memory_utilization),
            "is_attention_free": "False",
            "kv_cache_max_concurrency": str(self.kv_cache_max_concurrency),
            "kv_cache_memory_bytes": "None",
            "kv_cache_size_tokens": str(self.kv_cache_size_tokens),
            "kv_sharing_fast_prefill": "False",
            "num_cpu_blocks": "None",
            "num_gpu_blocks": str(self.num_gpu_blocks),
            "num_gpu_blocks_override": "None",
            "prefix_caching_hash_algo": "sha256",
            "sliding_window": "None",
            "engine": ENGINE_INDEX,
        }


class WorkerMetrics:
    """One registry per worker (tests run several in one process)."""

    def __init__(self, model_name: str, max_model_len: int, cache: CacheInfo) -> None:
        self.registry = CollectorRegistry()
        labels = list(vm.LABELS)
        r = self.registry
        values = {"model_name": model_name, "engine": ENGINE_INDEX}

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, labels, registry=r).labels(**values)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=r).labels(**values)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=r).labels(**values)

        self.running = gauge(vm.NUM_REQUESTS_RUNNING, "Number of requests in model execution batches.")
        self.waiting = gauge(vm.NUM_REQUESTS_WAITING, "Number of requests waiting to be processed.")
        self.kv_usage = gauge(vm.KV_CACHE_USAGE, "KV-cache usage. 1 means 100 percent usage.")
        info = cache.labels()
        Gauge(
            vm.CACHE_CONFIG_INFO, "Information of the LLMEngine CacheConfig", list(info), registry=r
        ).labels(**info).set(1)

        self.preemptions = counter(vm.NUM_PREEMPTIONS, "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter(vm.PROMPT_TOKENS, "Number of prefill tokens processed.")
        self.generation_tokens = counter(vm.GENERATION_TOKENS, "Number of generation tokens processed.")
        # Counted at admission, a preempted request's re-admission left out (vLLM 0.32's
        # PrefixCacheStats.record); hit rate = rate(hits_total) / rate(queries_total).
        self.prefix_queries = counter(
            vm.PREFIX_CACHE_QUERIES, "Prefix cache queries, in terms of number of queried tokens."
        )
        self.prefix_hits = counter(
            vm.PREFIX_CACHE_HITS, "Prefix cache hits, in terms of number of cached tokens."
        )
        success = Counter(
            vm.REQUEST_SUCCESS,
            "Count of successfully processed requests.",
            [*labels, "finished_reason"],
            registry=r,
        )
        self.success = {
            reason: success.labels(**values, finished_reason=reason) for reason in FINISHED_REASONS
        }

        self.ttft = histogram(
            vm.TIME_TO_FIRST_TOKEN, "Histogram of time to first token in seconds.", vm.TTFT_BUCKETS
        )
        self.itl = histogram(
            vm.INTER_TOKEN_LATENCY, "Histogram of inter-token latency in seconds.", vm.ITL_BUCKETS
        )
        self.e2e = histogram(
            vm.E2E_REQUEST_LATENCY, "Histogram of e2e request latency in seconds.", vm.REQUEST_LATENCY_BUCKETS
        )
        self.queue_time = histogram(
            vm.REQUEST_QUEUE_TIME,
            "Histogram of time spent in WAITING phase for request.",
            vm.REQUEST_LATENCY_BUCKETS,
        )
        token_buckets = tuple(float(b) for b in vm.token_count_buckets(max_model_len))
        self.request_prompt_tokens = histogram(
            vm.REQUEST_PROMPT_TOKENS, "Number of prefill tokens processed.", token_buckets
        )
        self.request_generation_tokens = histogram(
            vm.REQUEST_GENERATION_TOKENS, "Number of generation tokens processed.", token_buckets
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
