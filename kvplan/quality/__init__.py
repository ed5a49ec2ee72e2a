"""Quality gates for quantized-KV pools: how far a candidate's answers drift from the baseline's.

- `compare`: pure measures of agreement between two answers (exact, common prefix, tokens, length).
- `answers`: the answer text of an OpenAI response, whole or streamed.
- `prompts`, `scoring`, `report`, `evaluate`: `kvplan eval`, a prompt set run through a router
  against a bucket's pools.
"""
