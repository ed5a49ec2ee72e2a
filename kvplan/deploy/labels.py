"""Labels that identify a pool's servers, in Kubernetes and on every scraped vLLM series.

vLLM's own metrics carry only `model_name` and `engine`; the scrape (PodMonitor relabelling,
compose/demo static targets) adds these so dashboards and alerts can group vLLM series by the
plan's names, the same names the router's metrics use.
"""

from __future__ import annotations

from kvplan.plan import Bucket, Pool

POOL = "pool"
BUCKET = "bucket"
KV_FORMAT = "kv_format"
ROLE = "role"  # baseline | candidate

# Kubernetes label keys carrying the same facts on pods (relabelled to the names above).
K8S_PREFIX = "kvplan.io/"


def role(bucket: Bucket, pool: Pool) -> str:
    return "baseline" if pool.name == bucket.baseline.name else "candidate"


def pool_labels(bucket: Bucket, pool: Pool) -> dict[str, str]:
    """The scrape labels of one pool's servers."""
    return {
        POOL: pool.name,
        BUCKET: bucket.name,
        KV_FORMAT: pool.format.name,
        ROLE: role(bucket, pool),
    }
