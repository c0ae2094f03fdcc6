"""Helpers for tests that run quide-search in real processes and watch its study storage."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import optuna
import sqlalchemy.exc

STUDY = "toytask-make_slow"
"""The study of ``run_args``: the slow toy task (tests/toytask.py), built in milliseconds."""
TESTS = Path(__file__).resolve().parent
ATTRS = {"C", "P", "T_ms", "I", "I_prime", "gate_passed", "avg_weight_bits", "stored_bytes"}


def cli(*args: str) -> list[str]:
    """The command line of ``quide-search ARGS`` in this interpreter."""
    return [sys.executable, "-m", "quide_search", *args]


def env() -> dict[str, str]:
    """This process's environment, with the tests' folder importable (``toytask:make``)."""
    paths = [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def finish(argv: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to its end in a subprocess; return its exit code and output."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env())


def run_args(out_dir: Path, trials: int, *extra: str) -> list[str]:
    """A quiet, single-threaded CPU `run` on the slow toy task, its study under ``out_dir``.

    These tests are about processes, not T: each forward call of the slow toy model takes
    25 ms, so with an evaluation batch of 64 a trial (6 calls) is long enough to be stopped
    in the middle and for several processes to share a study, and T is the analytic estimate.
    """
    return cli(
        "run", "--model", "toytask:make_slow", "--trials", str(trials), "--out-dir",
        str(out_dir), "--device", "cpu", "--threads", "1", "--eval-batch-size", "64",
        "--latency", "model:cpu-epyc-2c", "--no-progress", *extra,
    )  # fmt: skip


def start(argv: Sequence[str]) -> subprocess.Popen[str]:
    """Start ``argv`` in a subprocess with its output piped."""
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env()
    )


def trials(
    storage: str, study: str = STUDY, timeout: float = 60.0
) -> list[optuna.trial.FrozenTrial]:
    """Every trial of the study, read through a fresh connection (empty if not created yet)."""
    kwargs = {"connect_args": {"timeout": timeout}} if storage.startswith("sqlite") else {}
    backend = optuna.storages.RDBStorage(storage, engine_kwargs=kwargs)
    try:
        names = [s.study_name for s in backend.get_all_studies()]
        if study not in names:
            return []
        return optuna.load_study(study_name=study, storage=backend).get_trials()
    finally:
        backend.engine.dispose()


def wait_until(
    storage: str,
    condition: Callable[[list[optuna.trial.FrozenTrial]], bool],
    process: subprocess.Popen[str],
    timeout: float = 120.0,
) -> list[optuna.trial.FrozenTrial]:
    """Poll the study until ``condition`` holds; fail if the process ends or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = trials(storage)
        if condition(current):
            return current
        if process.poll() is not None:
            raise AssertionError(f"process ended early: {process.communicate()}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError("condition not reached in time")


def signal_mid_trial(
    storage: str,
    condition: Callable[[list[optuna.trial.FrozenTrial]], bool],
    process: subprocess.Popen[str],
    sig: signal.Signals,
) -> list[optuna.trial.FrozenTrial]:
    """Send ``sig`` while ``condition`` holds, without racing the trial to its end.

    A digits trial can finish between the poll that saw it RUNNING and the signal. So the
    process is frozen first (SIGSTOP), the condition is checked again, and only then is the
    signal sent; a signal other than SIGKILL is delivered when the process continues.
    """
    while True:
        wait_until(storage, condition, process)
        process.send_signal(signal.SIGSTOP)
        try:
            # Frozen inside a commit, it would hold the database lock: read briefly, retry.
            current = trials(storage, timeout=2.0)
        except sqlalchemy.exc.OperationalError:
            current = []
        if condition(current):
            process.send_signal(sig)
            process.send_signal(signal.SIGCONT)
            return current
        process.send_signal(signal.SIGCONT)


Trials = list[optuna.trial.FrozenTrial]


def by_state(all_trials: Trials, state: str) -> Trials:
    return [t for t in all_trials if t.state.name == state]


def counted(all_trials: Sequence[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Trials that count towards --trials: scored in full, or stopped early (PRUNED)."""
    return [t for t in all_trials if t.state.name in ("COMPLETE", "PRUNED")]


def stored_digest(path: Path) -> str:
    """What a file stores: for a SQLite database, its logical content, not its bytes.

    quide-search runs SQLite in WAL mode, where merely opening and closing a database can
    move committed pages from the -wal file into the main file (a checkpoint): the bytes
    change, what is stored does not. Other files are hashed as they are.
    """
    if path.suffix != ".db":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        dump = "\n".join(connection.iterdump())
    finally:
        connection.close()
    return hashlib.sha256(dump.encode()).hexdigest()


def stored_files(root: Path) -> dict[str, str]:
    """``stored_digest`` of every file under ``root``, without SQLite's -wal and -shm files."""
    return {
        str(p.relative_to(root)): stored_digest(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


def run_recipe(skeleton: str, recipe: str, folder: Path, io: Path, *, outputs: str = "") -> None:
    """Run ``skeleton`` then a checkpoint's loading ``recipe`` in a fresh Python that never
    imports quide-search; the model must turn ``io``'s x into its y exactly (``outputs``:
    what to read off the model's return value, e.g. ``.logits``)."""
    script = f"""
import sys, torch
folder = {str(folder)!r}
{skeleton}{recipe}
io = torch.load({str(io)!r})
with torch.no_grad():
    assert torch.equal(model(io["x"]){outputs}, io["y"]), "outputs differ"
assert not any(m.startswith("quide_search") for m in sys.modules)
print("reloaded")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0 and "reloaded" in done.stdout, done.stderr[-2000:]
