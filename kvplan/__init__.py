"""kvplan: capacity planning and routing for LLM serving with quantized KV caches on vLLM."""

__version__ = "0.1.0"
