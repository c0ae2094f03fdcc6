"""The search's T against the confirmed T, on an idle machine and on one kept busy.

Runs ``quide-search run`` (in-process, a fresh study folder each time) twice per model: once on
an idle machine, once while as many spinning processes as the machine has cores keep every
core busy, as other users' jobs do on a shared server or CI runner. For each run it reports:

- what the latency table's check decided (the table used, or T measured per trial instead),
  and its worst error on the plans it timed whole;
- the largest I' the search stored (what the progress bar and optuna-dashboard show) beside
  the float model's, so an absurd I' (T near 0) shows at once;
- for every finalist of the confirmation step, search T / confirmed T; target: within 3x.

Usage:  python benchmarks/latency_busy.py [--models simplecnn,resnet18] [--trials 12]
                                          [--write benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _results import machine_line, publish

from quide_search.config import RunConfig
from quide_search.latency import TableCheck
from quide_search.records import StudyKey, TrialKey
from quide_search.study.run import run_search
from quide_search.study.summary import load_study, stored_confirmation

DATASETS = {"simplecnn": "digits", "resnet18": "mnist-5k"}


@contextlib.contextmanager
def busy(processes: int) -> Iterator[None]:
    """Keep ``processes`` CPU-bound processes spinning inside the block (0: none)."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)
    ]
    try:
        time.sleep(1.0 if spinners else 0.0)  # let the scheduler see them
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def one_run(
    model: str, trials: int, folder: Path, spinners: int, threads: int | None
) -> dict[str, Any]:
    """One ``run`` of ``model`` with ``spinners`` busy processes; its T figures."""
    config = RunConfig(model=model, dataset=DATASETS[model], trials=trials, device="cpu",
                       out_dir=str(folder), latency_threads=threads)  # fmt: skip
    started = time.perf_counter()
    with busy(spinners):
        run_search(config, progress=False, echo=lambda line: None)
    seconds = time.perf_counter() - started
    study = load_study(study=config.study_name, storage=config.storage_url)
    attrs = study.user_attrs
    check = TableCheck.from_list(attrs[StudyKey.LATENCY_TABLE_CHECK])
    search_t = {t.number: t.user_attrs[TrialKey.T_MS] for t in study.trials
                if TrialKey.T_MS in t.user_attrs}  # fmt: skip
    search_t["float"] = attrs[StudyKey.BASELINE][TrialKey.T_MS]  # type: ignore[index]
    confirmation = stored_confirmation(study)
    entries = confirmation.entries if confirmation else ()
    ratios = [search_t[e.trial] / e.T_confirmed_ms for e in entries]
    stored = [t.user_attrs[TrialKey.I_PRIME] for t in study.trials
              if TrialKey.I_PRIME in t.user_attrs]  # fmt: skip
    return {
        "model": model,
        "busy": spinners,
        "latency_threads": threads,
        "table_used": check.passed,
        "table_worst_error": check.worst,
        "finalists": len(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "best_I_prime": max(stored),
        "float_I_prime": attrs[StudyKey.BASELINE][TrialKey.I_PRIME],
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=str, default="simplecnn,resnet18")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument(
        "--latency-threads", type=int, default=None, help="torch threads T is timed with"
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--write", type=str, default=None, help="RESULTS.md to update")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for spinners in (0, cores):
                folder = Path(tmp) / f"{model}-{spinners}"
                rows.append(one_run(model, args.trials, folder, spinners, args.latency_threads))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    lines = [
        "## Search T against confirmed T, idle and busy"
        + (f" ({args.latency_threads} latency thread)" if args.latency_threads else ""),
        "",
        machine_line(),
        f"- command: `python benchmarks/latency_busy.py --models {args.models} "
        f"--trials {args.trials}"
        + (f" --latency-threads {args.latency_threads}" if args.latency_threads else "")
        + f"` (busy: {cores} spinning processes, one per core)",
        "",
        "| model | machine | table check: worst error | table used | search T / confirmed T "
        "(finalists) | best stored I' | float I' | run s |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['model']} | {'busy' if r['busy'] else 'idle'} | "
            f"{r['table_worst_error']:.0%} | {'yes' if r['table_used'] else 'no: measured'} | "
            f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f} ({r['finalists']}) | "
            f"{r['best_I_prime']:.2f} | {r['float_I_prime']:.2f} | {r['seconds']:.0f} |"
            for r in rows
        ),
    ]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    section = "latency_busy" + (f"_t{args.latency_threads}" if args.latency_threads else "")
    publish(lines, args.write, section)


if __name__ == "__main__":
    main()
