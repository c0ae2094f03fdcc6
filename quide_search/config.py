"""The run configuration: one frozen dataclass, validated once when it is built.

Precedence for the CLI: flags given on the command line > these defaults. Every value is checked
in ``__post_init__`` so the rest of the code can trust it, and so that bad input fails before any
study or file is touched. Nothing here does I/O or imports torch: the paths the settings name
are checked on this machine by :func:`quide_search.study.setup.check_paths`, which the study
layer's entry points (``run_search``, ``run_sweep``, the sensitivity command) call once, first.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from quide_search.errors import ConfigError, PlanError, did_you_mean
from quide_search.plan import DEFAULT_BACKEND, FLOAT, normalize_precision
from quide_search.protocol import MAX_SAMPLES, MAX_SEED
from quide_search.records import Budget
from quide_search.storage_url import (
    check_url_form,
    default_storage_url,
    supports_heartbeat,
)

__all__ = [
    "MAX_SEED",
    "SAMPLERS",
    "RunConfig",
    "check_sampler",
    "check_seed",
    "check_study_name",
    "check_threads",
    "plain_name",
]

_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
"""The largest seed Optuna's samplers take (numpy's RandomState)."""


SAMPLERS = ("tpe", "random", "nsga2", "gp")
"""Samplers that fit categorical search spaces."""

_UNFIT = {
    "cmaes": "CMA-ES models continuous and integer parameters only; on per-layer categorical "
    "choices Optuna would sample every parameter at random",
}


def check_sampler(name: str) -> None:
    """Raise ConfigError unless ``name`` is a sampler that fits categorical plans."""
    if name in _UNFIT:
        raise ConfigError(
            f"--sampler must fit categorical choices, but {name!r} does not: {_UNFIT[name]}. "
            f"Use one of {', '.join(SAMPLERS)}."
        )
    if name not in SAMPLERS:
        raise ConfigError(
            f"--sampler must be one of {', '.join(SAMPLERS)}, but got {name!r}."
            + did_you_mean(name, SAMPLERS)
        )


WORKERS_PER_CORE = 2
"""``--workers`` at most this many per CPU core: more only oversubscribe the machine."""
MAX_TRIALS = 10**7
"""The most trials a study may be asked to hold (each is at least a few ms of work)."""
MAX_SEQ_LEN = 1 << 20
"""The longest evaluation window in tokens (a causal LM's context is far shorter)."""


def plain_name(text: str) -> str:
    """``text`` as a name that is a valid file name everywhere (letters, digits, ``_-.``):
    ``mymod:factory`` becomes ``mymod-factory``; lower case, at most 128 characters."""
    return re.sub(r"[^A-Za-z0-9_.\-]+", "-", text).strip("-.").lower()[:128] or "study"


def check_study_name(name: str, *, flag: str = "--study") -> str:
    """Return ``name`` if it is a study name every command accepts.

    One rule for every command: 1-128 letters, digits, '_', '-' or '.', starting with a letter
    or digit. It keeps a name a plain file name (no path separators, no control characters).

    Raises:
        ConfigError: Naming the rule and what was given.
    """
    if not _STUDY_NAME.fullmatch(name):
        raise ConfigError(
            f"{flag} must be 1-128 letters, digits, '_', '-' or '.', starting with a letter or "
            f"digit, but got {name!r}. Choose a plain name such as simplecnn-digits."
        )
    return name


def check_seed(seed: object, *, flag: str = "--seed") -> int:
    """Return ``seed`` if Optuna's samplers take it: an integer in [0, 2**32 - 1].

    Raises:
        ConfigError: For anything else.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{flag} must be an integer in [0, {MAX_SEED}], but got {seed!r}.")
    return seed


def check_threads(threads: int | None, *, flag: str, force: bool = False) -> None:
    """Refuse a thread count below 1, or above the machine's cores unless ``force``.

    Raises:
        ConfigError: Naming the count, the cores and the flag that allows more.
    """
    if threads is None:
        return
    from quide_search.latency._base import MAX_THREADS

    if not 1 <= threads <= MAX_THREADS:
        raise ConfigError(f"{flag} must be in [1, {MAX_THREADS}], but got {threads}.")
    cores = os.cpu_count() or 1
    if threads > cores and not force:
        raise ConfigError(
            f"{flag} must be at most the machine's {cores} cores, but got {threads}: more "
            "threads than cores only wait on each other. Lower it, or add --force-threads."
        )


@dataclass(frozen=True)
class RunConfig:
    """Settings of a search (``run``), a uniform sweep (``sweep``) and a replay (``evaluate``).

    Each field is the command-line flag of the same name (``seq_len`` is ``--seq-len``;
    ``warm_start`` is cleared by ``--no-warm-start``), documented once, in that flag's help
    (``quide-search run --help``); the CLI builds a RunConfig from its parsed arguments by
    these names, in one call.
    """

    model: str = "simplecnn"
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    weights: str | None = None
    eval_samples: int | None = None
    calib_samples: int | None = None
    test_samples: int | None = None
    text_file: str | None = None
    seq_len: int = 512
    eval_windows: int = 64
    dtype: str = "auto"
    include_head: bool = False
    granularity: str = "layer"
    trials: int = 50
    bits: tuple[str, ...] = ("int8", "int4", "int2")
    backend: str = DEFAULT_BACKEND
    max_accuracy_drop: float | None = 0.01
    min_accuracy: float | None = None
    study: str | None = None
    storage: str | None = None
    seed: int = 0
    device: str = "auto"
    batch_size: int = 1
    eval_batch_size: int = 256
    eval_chunk: int | None = None
    threads: int | None = None
    latency_threads: int | None = None
    latency_sample_ms: float = 5.0
    cache_mb: float = 4096.0
    latency: str = "auto"
    confirm_top: int = 5
    objective: str = "iprime"
    sampler: str = "tpe"
    early_stop: str = "exact"
    warm_start: bool = True
    max_size_mb: float | None = None
    max_latency_ms: float | None = None
    out_dir: str = "studies"
    workers: int = 1
    heartbeat: int | None = None
    force_threads: bool = False

    def __post_init__(self) -> None:
        self._check_counts()
        self._check_bits()
        self._check_gate()
        self._check_measurement()
        self._check_search()
        self._check_storage()

    def _check_counts(self) -> None:
        samples = [(f, n) for f, n in (("--eval-samples", self.eval_samples),
                   ("--calib-samples", self.calib_samples), ("--test-samples", self.test_samples))
                   if n is not None]  # fmt: skip
        for flag, number, low, high in (
            ("--trials", self.trials, 0, MAX_TRIALS),
            ("--workers", self.workers, 1, MAX_TRIALS),
            ("--heartbeat", 0 if self.heartbeat is None else self.heartbeat, 0, 86_400),
            ("--confirm-top", self.confirm_top, 0, MAX_TRIALS),
            ("--seq-len", self.seq_len, 1, MAX_SEQ_LEN),
            ("--eval-windows", self.eval_windows, 1, MAX_SAMPLES),
            *((f, n, 1, MAX_SAMPLES) for f, n in samples),
        ):
            if (
                isinstance(number, bool)
                or not isinstance(number, int)
                or not low <= number <= high
            ):
                raise ConfigError(
                    f"{flag} must be an integer in [{low}, {high}], but got {number!r}."
                )
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        cores = cores or os.cpu_count() or 1  # the cores this process may run on
        if self.workers > WORKERS_PER_CORE * cores:
            raise ConfigError(
                f"--workers must be at most {WORKERS_PER_CORE} per CPU core ({cores} cores here: "
                f"{WORKERS_PER_CORE * cores}), but got {self.workers}. Each worker is a process "
                "holding its own copy of the model; use fewer, or run more hosts on one --storage."
            )
        check_seed(self.seed)
        if self.text_file is not None and not self.reads_text:
            raise ConfigError(
                "--text-file is read only by causal language models (hf: paths and "
                f"smollm2-135m), but --model {self.model!r} is not one. Drop --text-file, or "
                "name a language model."
            )

    def _check_bits(self) -> None:
        try:
            bits = tuple(normalize_precision(b, where="--bits entry") for b in self.bits)
        except PlanError as e:
            raise ConfigError(str(e)) from e
        if not bits or all(b == FLOAT for b in bits):
            raise ConfigError(
                f"--bits must include at least one quantized precision, but got bits={self.bits}."
            )
        if len(set(bits)) != len(bits):
            raise ConfigError(f"--bits must not repeat a precision, but got bits={self.bits}.")
        object.__setattr__(self, "bits", bits)

    def _check_gate(self) -> None:
        for flag, value in (
            ("--max-accuracy-drop", self.max_accuracy_drop),
            ("--min-accuracy", self.min_accuracy),
        ):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{flag} must lie in [0, 1], but got {value}.")
        if self.max_accuracy_drop is None and self.min_accuracy is None:
            raise ConfigError("the gate needs --max-accuracy-drop or --min-accuracy; got neither.")

    def _check_measurement(self) -> None:
        from quide_search.backends import check_backend
        from quide_search.latency._base import MAX_BATCH
        from quide_search.latency.profiles import parse_source

        for flag, value, high in (
            ("--batch-size", self.batch_size, MAX_BATCH),
            ("--eval-batch-size", self.eval_batch_size, MAX_BATCH),
            ("--eval-chunk", 1 if self.eval_chunk is None else self.eval_chunk, MAX_SAMPLES),
        ):
            if not 1 <= value <= high:
                raise ConfigError(f"{flag} must be in [1, {high}], but got {value}.")
        for flag, threads in (("--threads", self.threads),
                              ("--latency-threads", self.latency_threads)):  # fmt: skip
            check_threads(threads, flag=flag, force=self.force_threads)
        parse_source(self.latency)
        check_backend(self.backend)
        if not self.cache_mb > 0:
            raise ConfigError(f"--cache-mb must be > 0, but got {self.cache_mb}.")
        if not 0 <= self.latency_sample_ms < float("inf"):
            raise ConfigError(
                "--latency-sample-ms must be a finite number >= 0, but got "
                f"{self.latency_sample_ms}."
            )
        if self.granularity not in ("layer", "block", "type"):
            raise ConfigError(
                f"--granularity must be layer, block or type, but got {self.granularity!r}."
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device must be one of auto, cpu, cuda, but got {self.device!r}.")

    def _check_storage(self) -> None:
        if self.study is not None:
            check_study_name(self.study)
        if self.storage is not None:
            check_url_form(self.storage)
            if self.heartbeat and not supports_heartbeat(self.storage):
                raise ConfigError(
                    "--heartbeat needs an RDB storage (sqlite:///, postgresql://, mysql://), "
                    f"but got --heartbeat {self.heartbeat} with --storage {self.storage!r}, a "
                    "journal file, which has no heartbeats. Drop --heartbeat or use an RDB URL."
                )

    def _check_search(self) -> None:
        check_sampler(self.sampler)
        for flag, value, allowed in (
            ("--objective", self.objective, ("iprime", "pareto")),
            ("--early-stop", self.early_stop, ("exact", "stat", "off")),
        ):
            if value not in allowed:
                raise ConfigError(
                    f"{flag} must be one of {', '.join(allowed)}, but got {value!r}."
                )
        if self.sampler == "gp" and self.objective == "pareto":
            raise ConfigError(
                "--sampler gp needs --objective iprime (one objective), but got --objective "
                "pareto. Use --sampler tpe or nsga2 for Pareto mode."
            )
        Budget(max_size_mb=self.max_size_mb, max_latency_ms=self.max_latency_ms)  # checks them

    @property
    def study_name(self) -> str:
        """The study name: ``--study`` or ``<model>-<dataset>``."""
        if self.study:
            return self.study
        if self.model.startswith("hf:"):
            text = Path(self.text_file or "text").stem
            name = f"{Path(self.model.removeprefix('hf:')).name}-{text}"
        elif ":" in self.model:  # package.module:factory
            name = self.model
        else:
            name = f"{self.model}-{self.dataset}"
        return plain_name(name)

    @property
    def storage_url(self) -> str:
        """The storage URL: ``--storage`` or a SQLite file under ``out_dir``."""
        return self.storage or default_storage_url(study=self.study_name, out_dir=self.out_dir)

    @property
    def reads_text(self) -> bool:
        """Whether the model is a causal LM scored on ``--text-file`` (hf: or embedded)."""
        from quide_search.tasks.catalog import names_causal_lm

        return names_causal_lm(self.model)

    def task_options(self) -> dict[str, Any]:
        """Return the keyword arguments of :func:`quide_search.task.load_task`."""
        from quide_search.tasks.models.causal_lm import HF_PREFIX, TextTask

        text = None
        if self.reads_text:
            text = TextTask(
                path=self.model.removeprefix(HF_PREFIX),
                # Absolute, so that evaluate finds it from any folder.
                text_file=os.path.abspath(self.text_file) if self.text_file else None,
                seq_len=self.seq_len,
                eval_windows=self.eval_windows,
                dtype=self.dtype,
                include_head=self.include_head,
            )
        return {
            "model": self.model,
            "dataset": self.dataset,
            "data_dir": self.data_dir,
            "download": self.download,
            "weights": self.weights,
            "text": text,
            "eval_samples": self.eval_samples,
            "calib_samples": self.calib_samples,
            "test_samples": self.test_samples,
        }

    def gate_settings(self) -> dict[str, float | None]:
        """Return the gate parameters (the baseline P is measured, not configured)."""
        return {"max_drop": self.max_accuracy_drop, "min_accuracy": self.min_accuracy}

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as plain JSON types."""
        data = asdict(self)
        data["bits"] = list(self.bits)
        return data
