"""Finish the bundle's install into a site directory (called by setup_device.sh, or by the CPU
dry-run tests with their own site): vLLM without its compiled extensions made importable, and
kvplan's plugin entry point registered.

    python3 bench/vllm_gpu/site_setup.py SITE
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLASH_ATTN_GUARD = "if not (FA2_AVAILABLE or FA3_AVAILABLE):"
ENTRY_POINTS = "[vllm.general_plugins]\nkvplan = kvplan.workers.vllm_plugin:register\n"


def setup_site(site: Path) -> None:
    vllm = site / "vllm"
    if not (vllm / "__init__.py").is_file():
        raise SystemExit(f"error: no vLLM source in {site} (unpack the bundle's vllm-*.tgz there first)")
    # vllm/platforms/cuda.py imports the compiled op library: the stand-in answers instead
    shutil.copy(HERE / "c_stub.py", vllm / "_C_stable_libtorch.py")
    # the compiled flash-attention is absent too; vLLM's Triton backends never call it, so let
    # the package import (its functions are only reached by the FLASH_ATTN backend)
    fa = vllm / "vllm_flash_attn" / "__init__.py"
    text = fa.read_text()
    if FLASH_ATTN_GUARD in text:
        fa.write_text(text.replace(FLASH_ATTN_GUARD, "if False:  # kvplan harness: no compiled flash-attn"))
    elif "kvplan harness" not in text:
        raise SystemExit(f"error: {fa} changed: its import guard {FLASH_ATTN_GUARD!r} is gone")
    write_plugin_entry_point(site)


def write_plugin_entry_point(site: Path) -> None:
    """kvplan's plugin, found by vLLM through its entry point (kvplan itself is on PYTHONPATH)."""
    dist = site / "kvplan_vllm_plugin-0.1.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kvplan-vllm-plugin\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: site_setup.py SITE")
    setup_site(Path(sys.argv[1]))
