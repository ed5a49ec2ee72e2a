"""Cold start of `kvplan size` (target < 0.3 s wall on a 2-core machine), side by side with the
bare interpreter and `kvplan --help` in the same run, plus the heavy-import check.

    .venv/bin/python bench/planner_cold_start.py [--runs 30] [--baseline DIR]

`--baseline DIR` times the same commands again with another checkout's code (PYTHONPATH=DIR, e.g.
a `git worktree` of the previous commit), interleaved in the same run.

Uses hyperfine when installed (apt-get install hyperfine), else a repeated-subprocess timer.
Writes bench/results/planner_cold_start.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = ROOT / ".venv" / "bin" / "python"
KVPLAN = ROOT / ".venv" / "bin" / "kvplan"
HEAVY = ("torch", "triton", "vllm", "starlette", "uvicorn", "httpx", "numpy", "matplotlib", "pydantic")

CASES = {
    "python -c pass (interpreter floor)": f"{PY} -c pass",
    "kvplan --help": f"{KVPLAN} --help",
    "kvplan size llama-3.1-8b": f"{KVPLAN} size llama-3.1-8b",
    "kvplan size llama-3.1-70b --gpu h100:4 --json": f"{KVPLAN} size llama-3.1-70b --gpu h100:4 --json",
    "kvplan size llama-3.1-8b --engine sglang": f"{KVPLAN} size llama-3.1-8b --engine sglang",
}


def cases(baseline: str | None) -> dict[str, str]:
    """This checkout's code (PYTHONPATH wins over the venv's editable install), and the baseline's."""
    out = {}
    for name, command in CASES.items():
        out[name] = f"env PYTHONPATH={ROOT} {command}"
        theirs = f"env PYTHONPATH={baseline} {command}"
        # a command the baseline does not have yet (it exits non-zero) is timed on this side only
        if (
            baseline
            and "kvplan" in name
            and subprocess.run(theirs.split(), capture_output=True).returncode == 0
        ):
            out[f"{name} [baseline]"] = theirs
    return out


def with_hyperfine(runs: int, cases: dict[str, str]) -> dict[str, dict[str, float]]:
    out = Path(tempfile.mkdtemp()) / "hf.json"
    cmd = ["hyperfine", "--warmup", "3", "--runs", str(runs), "--export-json", str(out), "-N"]
    for name, command in cases.items():
        cmd += ["-n", name, command]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    data = json.loads(out.read_text())["results"]
    return {
        r["command"]: {
            "median": r["median"],
            "mean": r["mean"],
            "min": r["min"],
            "max": r["max"],
            "cpu": r["user"] + r["system"],
        }
        for r in data
    }


def with_subprocess(runs: int, cases: dict[str, str]) -> dict[str, dict[str, float]]:
    """Wall time per fresh process and its CPU time (user + sys, the children's rusage): on a shared
    machine the CPU figure is what the command costs, the wall figure also what it waited."""
    import resource

    times: dict[str, list[float]] = {name: [] for name in cases}
    cpus: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(runs + 3):  # round robin: machine noise hits every case alike
        for name, command in cases.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            subprocess.run(command.split(), check=True, stdout=subprocess.DEVNULL)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if i >= 3:
                times[name].append(time.perf_counter() - t)
                cpus[name].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    res = {}
    for name, ts in times.items():
        res[name] = {"median": statistics.median(ts), "mean": statistics.mean(ts), "min": min(ts),
                     "max": max(ts), "cpu": statistics.mean(cpus[name])}  # fmt: skip
    return res


# What the console script runs (kvplan.cli:main), in-process so sys.modules can be inspected.
SIZE_IN_PROCESS = (
    "import sys\nfrom kvplan.cli import main\nsys.argv = ['kvplan', 'size', 'llama-3.1-8b']\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\n"
)


def heavy_imports() -> list[str]:
    code = SIZE_IN_PROCESS + f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([str(PY), "-c", code], capture_output=True, text=True, check=True, env=env)
    return json.loads(r.stderr.strip().splitlines()[-1].replace("'", '"'))


def slowest_imports(n: int = 8) -> list[tuple[str, int]]:
    code = SIZE_IN_PROCESS
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [str(PY), "-X", "importtime", "-c", code]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    rows = []
    for line in r.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cum, name = line.split("|")
            if not name.startswith("  "):  # top-level imports only
                rows.append((name.strip(), int(cum)))
    return sorted(rows, key=lambda x: -x[1])[:n]


def _describe(checkout: str) -> str:
    """The commit a baseline checkout holds (its `.kvplan-commit` file when it is an export)."""
    marker = Path(checkout) / ".kvplan-commit"
    if marker.exists():
        return f"commit {marker.read_text().strip()}"
    r = subprocess.run(
        ["git", "-C", checkout, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return f"commit {r.stdout.strip()}" if r.returncode == 0 else "not a git checkout"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--baseline", help="another checkout's root: its code timed side by side")
    args = ap.parse_args()
    tool = "hyperfine" if shutil.which("hyperfine") else "subprocess timer"
    todo = cases(args.baseline)
    res = with_hyperfine(args.runs, todo) if tool == "hyperfine" else with_subprocess(args.runs, todo)
    heavy = heavy_imports()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    size_median = res["kvplan size llama-3.1-8b"]["median"]
    lines = [
        "# `kvplan size` cold start",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- device: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}; shared machine, "
        f"1-min load average {os.getloadavg()[0]:.1f} at the end"
        + (f", run at nice {os.nice(0)} so that other jobs yield the CPU" if os.nice(0) < 0 else ""),
        f"- command: `.venv/bin/python bench/planner_cold_start.py {' '.join(sys.argv[1:])}` "
        f"({tool}, 3 warm-up runs,"
        ' page cache warm: "cold" means a fresh process)',
        *(
            [f"- baseline: `{args.baseline}` ({_describe(args.baseline)}), interleaved round by round"]
            if args.baseline
            else []
        ),
        "",
        "| command | median s | mean s | min s | max s | CPU (user+sys) mean s |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in res.items():
        cells = [f"{r[k]:.3f}" for k in ("median", "mean", "min", "max", "cpu")]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    verdict = "met" if size_median < 0.3 else "NOT met"
    lines += [
        "",
        f"Target `kvplan size` < 0.3 s wall: median {size_median:.3f} s, **{verdict}**.",
        "",
        f"Heavy modules imported by `kvplan size` (checked: {', '.join(HEAVY)}): {heavy or 'none'}.",
        "",
        "Largest top-level imports on the `kvplan size` path (cumulative µs, `python -X importtime`):",
        "",
        *(f"- `{name}`: {us:,}" for name, us in slowest_imports()),
    ]
    dest = ROOT / "bench" / "results" / "planner_cold_start.md"
    dest.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    sys.exit(0 if size_median < 0.3 and not heavy else 1)


if __name__ == "__main__":
    main()
