"""GPU catalog: CUDA-visible memory (what vLLM's utilisation multiplies), bandwidth and FLOP rates.

Memory is what `torch.cuda.mem_get_info()` reports as total, not the marketing figure: an
"80 GB" H100 shows 79.18 GiB. Each entry says where its figure comes from (`memory_source`);
"estimated" ones are the marketing capacity less about what the measured cards lose.
FLOP rates are dense (no 2:4 sparsity). Prices live in the dated price file, not here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from kvplan.errors import InputError, NotFound, closest

GIB = 1 << 30
TB = 10**12


@dataclass(frozen=True)
class GpuSpec:
    name: str
    visible_memory_bytes: int
    bandwidth_bytes_s: float
    bf16_flops: float
    fp8_flops: float
    fp8_supported: bool
    # Where visible_memory_bytes comes from: "measured" (torch.cuda.mem_get_info on the card),
    # "facts.md" (a measured figure, docs/facts.md §2), "user log" (vLLM's logged total), "estimated".
    memory_source: str = "estimated"
    description: str = ""
    note: str = ""  # what kvplan cannot know about this GPU, shown with every size on it
    # CUDA compute capability (major, minor); None: not an NVIDIA GPU (ROCm) or not known
    compute_capability: tuple[int, int] | None = None

    @property
    def visible_memory_gib(self) -> float:
        return self.visible_memory_bytes / GIB

    def with_memory(self, nbytes: int) -> GpuSpec:
        return replace(self, visible_memory_bytes=nbytes, memory_source="override")


def _gib(x: float) -> int:
    return round(x * GIB)


# 46,068 MiB in nvidia-smi with ECC on (the A40 in guqiong96/Lvllm#35's log); its vGPU profile is the
# same card
_A40 = GpuSpec("a40", _gib(44.55), 0.696 * TB, 150e12, 0.0, False, "estimated", "A40 48GB")

GPUS: dict[str, GpuSpec] = {
    g.name: g
    for g in (
        # 85,017,493,504 B: torch.cuda.mem_get_info() on an H100 80GB HBM3 (driver 580), 2026-11-23
        GpuSpec("h100", 85_017_493_504, 3.35 * TB, 989e12, 1979e12, True, "measured", "H100 SXM 80GB"),
        GpuSpec("h100-pcie", _gib(79.18), 2.0 * TB, 756e12, 1513e12, True, "estimated", "H100 PCIe 80GB"),
        GpuSpec("h200", _gib(139.80), 4.8 * TB, 989e12, 1979e12, True, "measured", "H200 141GB"),
        GpuSpec("b200", _gib(178.36), 8.0 * TB, 2250e12, 4500e12, True, "estimated", "B200 180GB"),
        GpuSpec("a100-80gb", _gib(79.20), 2.039 * TB, 312e12, 0.0, False, "facts.md", "A100 SXM 80GB"),
        GpuSpec("a100-40gb", _gib(39.39), 1.555 * TB, 312e12, 0.0, False, "estimated", "A100 40GB"),
        GpuSpec("l40s", _gib(44.99), 0.864 * TB, 362e12, 733e12, True, "facts.md", "L40S 48GB"),
        GpuSpec("l4", _gib(22.49), 0.3 * TB, 121e12, 242e12, True, "facts.md", "L4 24GB"),
        # 23.58 GiB: total_gpu_memory in a user's vLLM log (vllm-project/vllm#10517)
        GpuSpec("rtx-3090", _gib(23.58), 0.936 * TB, 71e12, 0.0, False, "user log", "RTX 3090 24GB"),
        GpuSpec("a10g", _gib(22.07), 0.6 * TB, 70e12, 0.0, False, "estimated", "A10G 24GB (AWS)"),
        GpuSpec("rtx-4090", _gib(23.64), 1.008 * TB, 165e12, 330e12, True, "estimated", "RTX 4090 24GB"),
        GpuSpec("mi300x", _gib(191.98), 5.3 * TB, 1307e12, 2615e12, True, "estimated", "MI300X 192GB"),
        # Workstation and datacenter cards users run vLLM on. "estimated": nvidia-smi's total less the
        # ~450 MiB the CUDA context keeps (H100: 81,559 MiB -> 81,078; RTX 3090: 24,576 -> 24,146).
        GpuSpec("rtx-a5000", _gib(23.55), 0.768 * TB, 111e12, 0.0, False, "estimated", "RTX A5000 24GB"),
        GpuSpec("rtx-a6000", _gib(47.55), 0.768 * TB, 155e12, 0.0, False, "estimated", "RTX A6000 48GB"),
        GpuSpec(
            "rtx-6000-ada", _gib(47.55), 0.96 * TB, 364e12, 728e12, True, "estimated", "RTX 6000 Ada 48GB"
        ),
        GpuSpec("rtx-4080", _gib(15.55), 0.717 * TB, 97e12, 195e12, True, "estimated", "RTX 4080 16GB"),
        GpuSpec("rtx-5090", _gib(31.40), 1.792 * TB, 209e12, 419e12, True, "estimated", "RTX 5090 32GB"),
        _A40,
        replace(
            _A40,
            name="a40-48q",
            description="A40-48Q vGPU profile",
            note="vGPU profiles keep several GiB outside torch that kvplan does not model: pass "
            "--non-torch-gib with the figure vLLM logs (DEBUG: total consumed minus weights and torch peak)",
        ),
        GpuSpec("l20", _gib(44.55), 0.864 * TB, 119.5e12, 239e12, True, "estimated", "L20 48GB"),
        GpuSpec("gh200", _gib(95.14), 4.0 * TB, 989e12, 1979e12, True, "estimated", "GH200 96GB HBM3"),
        # 121.69 GiB: CUDA's total on a DGX Spark (MiaAI-Lab/GLM-5.3-Flash-EXL3-2x-DGX-Sparks#47)
        GpuSpec(
            "gb10",
            _gib(121.69),
            0.273 * TB,
            62e12,
            125e12,
            True,
            "user log",
            "GB10 (DGX Spark) 128GB unified",
            "unified memory: page cache and other processes share it, so vLLM's profile can count them as "
            "non-torch memory; --kv-cache-memory-gib is the reliable input here",
        ),
        GpuSpec("b300", _gib(286.4), 8.0 * TB, 2250e12, 4500e12, True, "estimated", "B300 288GB"),
        GpuSpec("mi325x", _gib(255.98), 6.0 * TB, 1307e12, 2615e12, True, "estimated", "MI325X 256GB"),
        GpuSpec("mi355x", _gib(287.98), 8.0 * TB, 2300e12, 4600e12, True, "estimated", "MI355X 288GB"),
    )
}

# NVIDIA's CUDA compute capability per catalog GPU (AMD's have none)
_CAPABILITY: dict[str, tuple[int, int]] = {
    **dict.fromkeys(("h100", "h100-pcie", "h200", "gh200"), (9, 0)),
    **dict.fromkeys(("b200",), (10, 0)),
    "b300": (10, 3),
    **dict.fromkeys(("a100-80gb", "a100-40gb"), (8, 0)),
    **dict.fromkeys(("rtx-3090", "a10g", "rtx-a5000", "rtx-a6000", "a40", "a40-48q"), (8, 6)),
    **dict.fromkeys(("l40s", "l4", "rtx-4090", "rtx-6000-ada", "rtx-4080", "l20"), (8, 9)),
    "rtx-5090": (12, 0),
    "gb10": (12, 1),
}
GPUS = {name: replace(g, compute_capability=_CAPABILITY.get(name)) for name, g in GPUS.items()}

GPU_ALIASES: dict[str, str] = {
    "h100-sxm": "h100",
    "h100-80gb": "h100",
    "h100-sxm5": "h100",
    "h200-141gb": "h200",
    "a100": "a100-80gb",
    "a100-sxm": "a100-80gb",
    "4090": "rtx-4090",
    "3090": "rtx-3090",
    "a5000": "rtx-a5000",
    "a6000": "rtx-a6000",
    "rtx6000-ada": "rtx-6000-ada",
    "5090": "rtx-5090",
    "4080": "rtx-4080",
    "dgx-spark": "gb10",
}


def get_gpu(spec: str) -> tuple[GpuSpec, int]:
    """`h100` -> (H100, 1); `h100:8` -> (H100, 8 GPUs)."""
    name, _, count_text = spec.strip().lower().partition(":")
    count = 1
    if count_text:
        try:
            count = int(count_text)
        except ValueError:
            raise InputError(f"GPU count in {spec!r} must be an integer, like h100:8") from None
        if count <= 0:
            raise InputError(f"GPU count in {spec!r} must be positive")
    key = GPU_ALIASES.get(name, name)
    if key not in GPUS:
        raise NotFound(f"unknown GPU {name!r}" + closest(name, [*GPUS, *GPU_ALIASES]))
    return GPUS[key], count
