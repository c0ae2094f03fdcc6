"""The CPU's instruction-set flags that decide which int8/int4 kernels a runtime can use.

Read at run time, never assumed: the machines this project runs on differ (an AMD EPYC with
AVX2 only, another with AVX-512 VNNI, an Intel Xeon with AVX-512 VNNI and AMX), and a backend
chooses its kernel settings from them (:mod:`quide_search.backends.onnxruntime`).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["KERNEL_FLAGS", "cpu_flags", "has_vnni"]

KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile")
"""The flags that matter to int8/int4 kernels, in the order they are recorded."""

_VNNI = ("avx512_vnni", "avx_vnni", "amx_tile")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...]:
    """Which of :data:`KERNEL_FLAGS` this CPU has; empty where ``cpuinfo`` cannot be read
    (not Linux), which every caller treats as the least capable CPU."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return tuple(f for f in KERNEL_FLAGS if f in have)
    return ()


def has_vnni(flags: tuple[str, ...]) -> bool:
    """Whether ``flags`` include an int8 dot-product instruction (VNNI or AMX): without one,
    u8s8 int8 products can saturate their 16-bit intermediate sums (hence ``reduce_range``)."""
    return any(f in flags for f in _VNNI)
