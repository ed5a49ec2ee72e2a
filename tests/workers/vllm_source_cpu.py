"""vLLM's Python source (the GPU bundle's `vllm-*.tgz`, no compiled code at all) made to run on this
CPU, for dry runs of the GPU harness and of the plugin against vLLM versions with no CPU build.

The bundle's site setup is the GPU machine's (bench/vllm_gpu/site_setup.py); on top, the CPU
platform's compiled library `vllm._C` is this module's `CPU_OPS_MODULE`: the same stand-in, plus
torch versions of the few CPU-only ops the CPU worker calls (memory/thread binding are no-ops,
slot mapping and greedy argmax in torch). vLLM's own CPU attention needs compiled kernels, so
only kvplan's plugin attends here.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CPU_OPS_MODULE = '''"""vllm._C for CPU dry runs (tests/workers/vllm_source_cpu.py)."""
import torch

from vllm._C_stable_libtorch import AbsentOps


def _slot_mapping(query_start_loc, positions, block_table, slot_mapping, block_size):
    n = int(query_start_loc[-1])
    req = torch.searchsorted(query_start_loc[1:].long(), torch.arange(n), right=True)
    pos = positions[:n].long()
    slot_mapping[:n] = block_table[req, pos // block_size].long() * block_size + pos % block_size
    slot_mapping[n:] = -1


CPU_OPS = {
    "init_cpu_memory_env": lambda *a, **k: None,
    "init_cpu_threads_env": lambda *a, **k: "",
    "cpu_attn_has_isa": lambda *a, **k: False,
    "compute_slot_mapping_kernel_impl": _slot_mapping,
    "greedy_argmax": lambda logits: logits.argmax(dim=-1).view(-1),
}
_absent = AbsentOps.__getattr__


def _getattr(self, op):
    return CPU_OPS[op] if op in CPU_OPS else _absent(self, op)


AbsentOps.__getattr__ = _getattr
'''


def make_site(vllm_tgz: Path, site: Path) -> Path:
    """Unpack vLLM's source into `site` and set it up as on the GPU machine, plus the CPU ops."""
    site.mkdir(parents=True, exist_ok=True)
    with tarfile.open(vllm_tgz) as tar:
        tar.extractall(site, filter="data")
    subprocess.run(
        [sys.executable, str(REPO / "bench" / "vllm_gpu" / "site_setup.py"), str(site)], check=True
    )
    (site / "vllm" / "_C.py").write_text(CPU_OPS_MODULE)
    return site
