"""Names of vLLM's Prometheus metrics (vLLM 0.32-0.33, `/metrics`), defined once.

The router scrapes some, the simulated worker exports all of them with vLLM's label
conventions (`model_name`, `engine`), and the dashboards and alert rules query them.
"""

from __future__ import annotations

# gauges
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"  # 0-1 (the old vllm:gpu_cache_usage_perc is gone)
NUM_REQUESTS_RUNNING = "vllm:num_requests_running"
NUM_REQUESTS_WAITING = "vllm:num_requests_waiting"
CACHE_CONFIG_INFO = "vllm:cache_config_info"  # labels include num_gpu_blocks, block_size, cache_dtype
# counters (exposed with the _total suffix)
NUM_PREEMPTIONS = "vllm:num_preemptions"
PROMPT_TOKENS = "vllm:prompt_tokens"
GENERATION_TOKENS = "vllm:generation_tokens"
REQUEST_SUCCESS = "vllm:request_success"
PREFIX_CACHE_QUERIES = "vllm:prefix_cache_queries"
PREFIX_CACHE_HITS = "vllm:prefix_cache_hits"
# histograms
TIME_TO_FIRST_TOKEN = "vllm:time_to_first_token_seconds"
INTER_TOKEN_LATENCY = "vllm:inter_token_latency_seconds"
E2E_REQUEST_LATENCY = "vllm:e2e_request_latency_seconds"

LABELS = ("model_name", "engine")
