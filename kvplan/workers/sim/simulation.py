"""Drive the engine on a simulated clock: arrivals, steps, per-request timelines.

No sockets, no sleeping: a step of `d` simulated seconds moves the clock by `d`, and every token
of that step is stamped with the clock at its end. Tests and the capacity benchmark use this.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvplan.workers.sim.engine import Engine, StepResult


@dataclass
class Timeline:
    """When one request arrived, got its tokens and finished (simulated seconds)."""

    arrival: float
    prompt_tokens: int
    token_times: list[float] = field(default_factory=list)
    finished: float | None = None
    preemptions: int = 0

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.arrival

    @property
    def tpot(self) -> float:
        """Mean time per output token after the first (vLLM's TPOT)."""
        n = len(self.token_times)
        return (self.token_times[-1] - self.token_times[0]) / (n - 1) if n > 1 else 0.0


@dataclass
class Simulation:
    engine: Engine
    now: float = 0.0
    timelines: dict[str, Timeline] = field(default_factory=dict)
    steps: int = 0

    def submit(
        self, request_id: str, prompt_tokens: int, max_output_tokens: int, block_hashes: tuple[int, ...] = ()
    ) -> None:
        """A request arrives now."""
        self.engine.add(request_id, prompt_tokens, max_output_tokens, block_hashes)
        self.timelines[request_id] = Timeline(self.now, prompt_tokens)

    def step(self) -> StepResult:
        result = self.engine.step()
        self.now += result.duration
        self.steps += 1
        for request_id in result.preempted:
            self.timelines[request_id].preemptions += 1
        for event in result.tokens:
            timeline = self.timelines[event.request_id]
            timeline.token_times.append(self.now)
            if event.finished:
                timeline.finished = self.now
        return result

    def run_until_idle(self, max_steps: int = 10_000_000) -> None:
        while self.engine.has_work:
            if self.steps >= max_steps:
                raise RuntimeError(f"engine still busy after {max_steps} steps")
            self.step()

    def advance_to(self, t: float) -> None:
        """Step while there is work and the clock is before `t`; then idle until `t`."""
        while self.engine.has_work and self.now < t:
            self.step()
        self.now = max(self.now, t)
