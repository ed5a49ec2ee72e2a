"""`kvplan demo`: the whole stack on one machine, no GPU, no Redis, no Docker.

Starts four simulated vLLM replicas (two buckets: BF16 baselines, an INT8 and an INT4
candidate), the router with the in-memory flag store in front of them, Prometheus when it is
installed (scraping router and workers with the plan's rules loaded), and a load generator;
prints the URLs and a live summary. The router runs the rollout controller on its own counters;
with --redis the flags live in a private redis-server and `kvplan rollout run` is started as the
fleet's controller instead (analysing through Prometheus). Every process
it starts is its child and is stopped on Ctrl-C, SIGTERM or at the end of --duration; children
also die with it (PR_SET_PDEATHSIG).
"""
