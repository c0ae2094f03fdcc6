"""How fast the CLI answers questions that need no model: --help, typos, reading commands.

Each command runs in a fresh Python process (what a user's shell does), a few times; the
figure is the median wall time, and the table says whether torch was imported at all. The
reading commands run against a small study made first in a temporary folder.

A second table times what every process that quantizes pays before its first trial: torch and
optimum-quanto, imported plainly (quanto's ``__init__`` then imports transformers) and as the
quanto backend imports it; the three run interleaved, round after round.

    python benchmarks/cli_startup.py [--repeats 5] [--write benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import machine_line, write_section

# Run main() with the arguments, then say whether torch was imported (stderr, last line).
_PROBE = (
    "import sys; from quide_search.cli import main; rc = main(sys.argv[1:]); "
    "print('torch' in sys.modules, file=sys.stderr); sys.exit(rc)"
)

CASES = [
    ("--help", ["--help"]),
    ("typo in --model", ["run", "--model", "simplecn"]),
    ("typo in --dataset", ["run", "--dataset", "digit"]),
    ("bad --bits", ["run", "--bits", "3,8"]),
    ("missing plan file", ["evaluate", "--plan", "missing.json"]),
    ("studies", ["studies"]),
    ("show", ["show", "--study", "simplecnn-digits"]),
    ("report", ["report", "--study", "simplecnn-digits", "--out", "r.html"]),
    ("export a plan", ["export", "--study", "simplecnn-digits", "--out", "p.json"]),
]

IMPORTS = [
    ("torch", "import torch"),
    ("torch, optimum.quanto (plain import)", "import torch, optimum.quanto"),
    ("torch, optimum.quanto (as the backend imports it)",
     "import torch; from quide_search.backends.quanto import QuantoBackend; "
     "QuantoBackend().version()"),
]  # fmt: skip


def _import_rows(repeats: int) -> list[str]:
    """Median seconds of each import in IMPORTS, timed interleaved in fresh processes."""
    times: dict[str, list[float]] = {label: [] for label, _ in IMPORTS}
    for _ in range(repeats):
        for label, code in IMPORTS:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
            times[label].append(time.perf_counter() - start)
    return [f"| {label} | `{code}` | {statistics.median(times[label]):.2f} |"
            for label, code in IMPORTS]  # fmt: skip


def _time(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int, bool]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    lines = done.stderr.strip().splitlines()
    return seconds, done.returncode, bool(lines) and lines[-1] == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command")
    parser.add_argument("--write", type=str, default=None, help="RESULTS.md to update")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        env = {**os.environ, "QUIDE_DATA_DIR": str(cwd / "data")}
        make = ["run", "--trials", "3", "--latency", "model:cpu-epyc-2c", "--no-progress"]
        subprocess.run([sys.executable, "-m", "quide_search", *make], cwd=cwd, env=env,
                       check=True, capture_output=True)  # fmt: skip
        for label, case in CASES:
            runs = [_time(case, cwd, env) for _ in range(args.repeats)]
            median = statistics.median(s for s, _, _ in runs)
            rows.append(f"| {label} | `{' '.join(case)}` | {median:.2f} | {runs[0][1]} | "
                        f"{'yes' if runs[0][2] else 'no'} |")  # fmt: skip
    text = "\n".join([
        "## CLI start-up: answers that need no model",
        "",
        machine_line(),
        f"- command: `python benchmarks/cli_startup.py --repeats {args.repeats}` (median of "
        "fresh processes)",
        "",
        "| case | arguments | s | exit | torch imported |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "| a process that quantizes imports | code | s |",
        "|---|---|---|",
        *_import_rows(args.repeats),
    ])  # fmt: skip
    print(text)
    if args.write:
        write_section(args.write, "cli_startup", text)


if __name__ == "__main__":
    main()
