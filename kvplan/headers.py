"""HTTP headers kvplan's router reads and writes beyond OpenAI's, named once (lower-case bytes).

Response headers say who served a request; request headers let authorised tools and clients
steer it; the shadow header marks requests the router itself sends to a candidate, so a pool's
usage and billing can leave them out.
"""

from __future__ import annotations

POOL = b"x-kvplan-pool"  # response: the pool that served the request
REGIME = b"x-kv-regime"  # response: that pool's KV format (kvplan.formats regime label)
FORCE_POOL = b"x-kvplan-force-pool"  # request: serve from this pool (needs FORCE_TOKEN)
FORCE_TOKEN = b"x-kvplan-token"  # request: the router's admin token, authorising FORCE_POOL
PRECISION = b"x-kv-precision"  # request: "high" keeps the request off lossy candidates
SHADOW = b"x-kvplan-shadow"  # upstream request: a shadow copy; its answer never reaches a client

PRECISION_HIGH = b"high"


def name(header: bytes) -> str:
    """How the header is spelled in documentation and by HTTP clients ("X-Kvplan-Pool")."""
    return "-".join(p.capitalize() for p in header.decode().split("-")).replace("Kv-", "KV-")
