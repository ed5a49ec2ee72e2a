"""kvplan's quantized-KV kernels: quantize-on-write and paged decode attention.

Modules:
- `reference` — torch reference of every format (quantize, dequantize, write_kv, paged_attention);
  the CPU path and the ground truth of the tests.
- `triton_kernels` — the Triton cache-write, paged-attention (flash-decoding split) and combine
  kernels.
- `api` — what the vLLM plugin calls: same signatures as the reference, Triton on CUDA, the
  reference on CPU (`backend="auto"`).
- `eval` — two-pass perplexity of SmolLM2-135M-Instruct with the cache stored in each format
  (`kvplan kernels eval`).

Cache tensor convention (the vLLM plugin relies on it; keep it):
- One layer's KV cache is a uint8 tensor `[num_blocks, num_kv_heads, head_page_nbytes]`, with
  `head_page_nbytes = formats.get_format(name).head_page(head_dim, block_size).nbytes`. vLLM's
  `[blocks, heads, tokens, C]` byte view (C = `content_bytes_per_token`) is the same memory; the
  API accepts it as well and flattens the last two dims.
- Inside each head page the regions `k_codes`, `v_codes`, `k_meta`, `v_meta` sit at the offsets
  `formats` gives (16-byte aligned). Codes are row-major [token, channel] (int4: [token, d/2]
  bytes, channel j in the low nibble and j + d/2 in the high nibble of byte j); per-token meta is
  [token, group] fp32 (symmetric) or [token, group, (scale, zero)] fp16 (asymmetric).
- A token at slot s lives in block s // block_size at offset s % block_size (vLLM's slot_mapping;
  -1 means "do not write").
- Static scales (fp8 per tensor or per KV head) are separate tensors, `k_scale` / `v_scale`
  (a scalar or [num_kv_heads]), never in the pages; for formats with in-page scales they must be
  None.
- Formats whose keys are quantized per channel over a page (`int4_kivi`) keep the keys of pages
  that are not full yet in a `reference.KiviStage` (full precision, one row per partial page,
  looked up by block id): pass the same stage object to every `write_kv` and `paged_attention`
  call of that layer. Per-token formats need no stage: every token is final when written, which
  also keeps prefix caching and chunked prefill exact.
"""
