"""optimum-quanto's int4/int2 CPU kernel: reused whatever PATH the process started with."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = ["prepare_cpu_kernel"]

_KERNEL_READY: list[bool] = []  # once per process


def prepare_cpu_kernel(package: Path) -> None:
    """Have torch reuse quanto's int4/int2 CPU kernel whatever PATH the process started with,
    and say so on stderr when it must really be built.

    torch builds and loads the kernel (a C++ extension) with the first ``ninja`` on PATH, and
    ninja rebuilds it (60-100 s, in silence) when another ninja version built it last: a
    process started without the virtual environment's bin on PATH (cron, systemd, an IDE)
    found Debian's ninja and rebuilt the kernel the install had built with the environment's.
    So the ninja installed beside this Python (optimum-quanto's own dependency) is put first
    on PATH, as the install had it.

    Args:
        package: optimum-quanto's package folder (its build folder holds the kernel).
    """
    if _KERNEL_READY:
        return
    _KERNEL_READY.append(True)
    ninja = Path(sys.executable).parent / "ninja"
    if ninja.is_file() and shutil.which("ninja") != str(ninja):
        os.environ["PATH"] = os.pathsep.join((str(ninja.parent), os.environ.get("PATH", "")))
    built = package / "library/extensions/cpp/build/quanto_cpp.so"
    if not built.is_file():
        print(
            "note: building optimum-quanto's int4/int2 CPU kernel (a C++ extension; once per "
            "install, about a minute on 2 cores).",
            file=sys.stderr,
        )
