"""The GPU benchmarks refuse bad arguments with one usage line (exit 2) before touching a device."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PYTHONPATH": str(ROOT),
        "PATH": "/usr/bin:/bin",
        "CUDA_VISIBLE_DEVICES": "",
    }  # no GPU, even on one
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--sections", "check,bogus"], "unknown section bogus"),
        (["--variants", "triton,nosuch"], "unknown variant nosuch"),
        (["--formats", "int3"], "unknown format int3"),
        (["--shapes", "32x"], "--shapes takes BATCHxCONTEXT"),
        (["--shapes", "0x1024"], "must be positive"),
        ([], "needs a CUDA GPU"),  # none visible: refused, not a traceback
    ],
)
def test_kernels_decode_refuses_bad_arguments(args: list[str], says: str, tmp_path: Path) -> None:
    run = _run("bench/kernels_decode.py", *args, "--out", str(tmp_path / "k.json"))
    err = run.stderr.strip().splitlines()
    assert run.returncode == 2 and says in err[-1] and "Traceback" not in run.stderr, run.stderr[-800:]
    assert not (tmp_path / "k.json").exists()


def test_gpu_report_refuses_missing_and_foreign_files(tmp_path: Path) -> None:
    foreign = tmp_path / "other.json"
    foreign.write_text(json.dumps({"results": []}))
    for path, says in (
        (tmp_path / "absent.json", "no such result file"),
        (foreign, "not a GPU harness result"),
    ):
        run = _run("-m", "bench.vllm_gpu.report", str(path), "--md", str(tmp_path / "r.md"))
        assert run.returncode == 2 and says in run.stderr and "Traceback" not in run.stderr, run.stderr[-800:]
        assert not (tmp_path / "r.md").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["compare", "absent.json"], "no such result file"),
        (["run", "--out", "o", "--only", "nosuch"], "unknown case nosuch"),
        (["run", "--out", "o"], "run needs the GPU machine"),  # no GPU visible
    ],
)
def test_gpu_startup_refuses_bad_arguments(args: list[str], says: str) -> None:
    run = _run("bench/vllm_gpu_startup.py", *args)
    assert run.returncode == 2 and says in run.stderr and "Traceback" not in run.stderr, run.stderr[-800:]
