"""What `kvplan eval` reports, computed from the scores. Pure: scores in, report out.

Per task type and overall: each pool's mean score, and for each candidate the paired difference
candidate - baseline over the same prompts with a 95% confidence interval (Student's t on the
per-prompt differences: the prompts are the sample, so a set of 20 prompts with one regression
gives -0.05 in [-0.15, 0.05], not a certainty). Then the worst regressions side by side.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from kvplan.quality.prompts import EvalPrompt

ALL = "all"
# Student's t, two-sided 95%, by degrees of freedom (above 30: the normal 1.96 is within 4%).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t975(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.96


@dataclass(frozen=True)
class Difference:
    """candidate - baseline, mean over paired prompts, with its 95% interval."""

    mean: float
    low: float
    high: float


def paired_difference(cand: Sequence[float], base: Sequence[float]) -> Difference:
    d = [c - b for c, b in zip(cand, base, strict=True)]
    mean = statistics.fmean(d)
    if len(d) < 2:
        return Difference(mean, -math.inf if d else math.nan, math.inf if d else math.nan)
    half = t975(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return Difference(mean, mean - half, mean + half)


@dataclass(frozen=True)
class TaskRow:
    task: str
    n: int
    scores: dict[str, float]  # pool -> mean score
    differences: dict[str, Difference]  # candidate -> vs baseline


@dataclass(frozen=True)
class Regression:
    prompt: str
    task: str
    baseline_score: float
    candidate_score: float
    baseline_answer: str
    candidate_answer: str


@dataclass(frozen=True)
class EvalReport:
    bucket: str
    baseline: str
    candidates: tuple[str, ...]
    rows: tuple[TaskRow, ...]  # one per task type present, then ALL
    worst: dict[str, tuple[Regression, ...]]  # candidate -> worst first

    @property
    def overall(self) -> TaskRow:
        return self.rows[-1]

    def ranking(self) -> list[str]:
        """Candidates, best overall score first."""
        return sorted(self.candidates, key=lambda c: (-self.overall.scores[c], c))

    def regression(self, candidate: str) -> float:
        """How far the candidate's overall score is below the baseline's (negative: above)."""
        return -self.overall.differences[candidate].mean

    def failing(self, max_regression: float) -> list[str]:
        return [c for c in self.candidates if self.regression(c) > max_regression + 1e-12]

    def to_json(self) -> dict[str, object]:
        return {
            "bucket": self.bucket,
            "baseline": self.baseline,
            "candidates": list(self.candidates),
            "ranking": self.ranking(),
            "tasks": [asdict(r) for r in self.rows],
            "worst_regressions": {c: [asdict(r) for r in rs] for c, rs in self.worst.items()},
        }


Scores = Mapping[str, Mapping[str, float]]  # pool -> prompt id -> score
Answers = Mapping[str, Mapping[str, str]]  # pool -> prompt id -> answer


def _row(task: str, ids: list[str], baseline: str, candidates: Sequence[str], scores: Scores) -> TaskRow:
    pools = (baseline, *candidates)
    base = [scores[baseline][i] for i in ids]
    return TaskRow(
        task,
        len(ids),
        {p: statistics.fmean(scores[p][i] for i in ids) for p in pools},
        {c: paired_difference([scores[c][i] for i in ids], base) for c in candidates},
    )


def build_report(
    bucket: str,
    prompts: Sequence[EvalPrompt],
    baseline: str,
    candidates: Sequence[str],
    scores: Scores,
    answers: Answers,
    worst_n: int = 5,
) -> EvalReport:
    tasks = sorted({p.task.value for p in prompts})
    rows = [
        _row(t, [p.id for p in prompts if p.task.value == t], baseline, candidates, scores) for t in tasks
    ]
    rows.append(_row(ALL, [p.id for p in prompts], baseline, candidates, scores))
    worst: dict[str, tuple[Regression, ...]] = {}
    for c in candidates:
        drops = [
            Regression(
                p.id,
                p.task.value,
                scores[baseline][p.id],
                scores[c][p.id],
                answers[baseline][p.id],
                answers[c][p.id],
            )
            for p in prompts
            if scores[c][p.id] < scores[baseline][p.id]
        ]
        drops.sort(key=lambda r: (r.candidate_score - r.baseline_score, r.prompt))
        worst[c] = tuple(drops[:worst_n])
    return EvalReport(bucket, baseline, tuple(candidates), tuple(rows), worst)


def _ci(d: Difference) -> str:
    if math.isnan(d.mean):
        return "-"
    if math.isinf(d.low):
        return f"{d.mean:+.3f}"
    return f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"


def table_rows(report: EvalReport) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the summary table (rich and Markdown render the same cells)."""
    header = ["task", "n", f"{report.baseline} (baseline)"]
    for c in report.candidates:
        header += [c, f"{c} - baseline (95% CI)"]
    cells = []
    for r in report.rows:
        row = [r.task, str(r.n), f"{r.scores[report.baseline]:.3f}"]
        for c in report.candidates:
            row += [f"{r.scores[c]:.3f}", _ci(r.differences[c])]
        cells.append(row)
    return header, cells


def short(text: str, limit: int = 80) -> str:
    """One line, at most `limit` characters."""
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


def to_markdown(report: EvalReport) -> str:
    header, cells = table_rows(report)
    out = [f"## kvplan eval: bucket {report.bucket}", ""]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    out += ["| " + " | ".join(row) + " |" for row in cells]
    out += ["", "Ranking (overall score): " + " > ".join(report.ranking())]
    for c, regs in report.worst.items():
        out += ["", f"### Worst regressions: {c}", ""]
        if not regs:
            out.append("none")
            continue
        out.append(f"| prompt | task | baseline | {c} | baseline answer | {c} answer |")
        out.append("|---|---|---|---|---|---|")
        for r in regs:
            row = (r.prompt, r.task, f"{r.baseline_score:.2f}", f"{r.candidate_score:.2f}",
                     short(r.baseline_answer), short(r.candidate_answer))  # fmt: skip
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    return "\n".join(out) + "\n"
