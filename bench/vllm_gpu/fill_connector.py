"""vLLM's DecodeBenchConnector for the harness's decode points only.

vLLM's connector makes the scheduler treat all but the last prompt token of every request as
already in the KV cache (as if a prefill instance had sent them): blocks are allocated and
block-tabled as usual, nothing is computed for them. That is what the decode points need (32K
contexts without minutes of prefill); the correctness and prefill phases of the same engine need
the opposite, so only requests whose id starts with `fill.` are served.
"""

from __future__ import annotations

from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.decode_bench_connector import DecodeBenchConnector

from bench.vllm_gpu.configs import FILL_PREFIX


class KvplanDecodeBench(DecodeBenchConnector):  # type: ignore[misc]
    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int | None, bool]:
        if not request.request_id.startswith(FILL_PREFIX):
            return 0, False
        return super().get_num_new_matched_tokens(request, num_computed_tokens)  # type: ignore[no-any-return]
