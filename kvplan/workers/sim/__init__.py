"""The simulated worker: one vLLM replica's API, scheduler and metrics without a GPU."""
