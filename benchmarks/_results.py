"""Write one benchmark's current figures into benchmarks/RESULTS.md, in place.

RESULTS.md holds the current figure of each benchmark, in a section between the markers
``<!-- NAME -->`` and ``<!-- /NAME -->``; a new run replaces its own section and leaves the
others alone. Earlier figures live in ``benchmarks/history/`` and in git.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from pathlib import Path

import torch

from quide_search.backends.cpu import cpu_flags

__all__ = ["cpu_flags", "machine_line", "publish", "write_section"]


def machine_line() -> str:
    """One line naming the machine, its kernel-relevant CPU flags, the date and the library
    versions of a measurement."""
    cpu = f"{_cpu_name()}; {' '.join(cpu_flags()) or 'no AVX2'}"
    return (
        f"- {dt.date.today().isoformat()}, {os.cpu_count()} cores ({cpu}), Python "
        f"{sys.version.split()[0]}, torch {torch.__version__}, {torch.get_num_threads()} "
        "torch threads"
    )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_section(path: str | Path, name: str, text: str) -> None:
    """Replace the section ``name`` of ``path`` with ``text`` (appended if it is new)."""
    file = Path(path)
    old = file.read_text(encoding="utf-8") if file.exists() else "# Benchmark results\n"
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in old and end in old:
        before, rest = old.split(start, 1)
        new = before + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    file.write_text(new, encoding="utf-8")


def publish(lines: list[str], path: str | None, name: str) -> None:
    """Print a benchmark's section and, with ``path``, write it into that RESULTS.md."""
    text = "\n".join(lines)
    print(text)
    if path:
        write_section(path, name, text)
