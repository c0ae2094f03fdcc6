"""Building a study's protocol from its run settings and task, on this machine.

:func:`build_protocol` is the one place a :class:`~quide_search.protocol.Protocol` is made;
:func:`on_backend` moves a stored one to another backend (``evaluate --backend``). The records
themselves, and how a stored protocol is checked on resume, are :mod:`quide_search.protocol`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from quide_search.errors import ConfigError
from quide_search.protocol import Evaluation, GateRule, Protocol, Search, TaskRecord

if TYPE_CHECKING:
    import torch

    from quide_search.backends import QuantBackend
    from quide_search.config import RunConfig
    from quide_search.tasks.task import Task

__all__ = ["build_protocol", "on_backend"]


def build_protocol(config: RunConfig, task: Task, *, device: torch.device) -> Protocol:
    """Return the protocol of ``config`` on ``task``: the one place a protocol is made.

    The evaluation's chunk schedule is left unset unless ``--eval-chunk`` gives it; the
    creator fits it (:meth:`Protocol.with_chunking`).

    Raises:
        ConfigError: For a backend that cannot run ``config.bits`` on ``device`` (or on this
            model's layers), a model without a layer the backend quantizes, or a latency
            profile that does not exist.
    """
    import optuna
    import torch

    from quide_search._version import __version__
    from quide_search.backends import get_backend
    from quide_search.latency.settings import latency_context

    backend = get_backend(config.backend)
    backend.check_precisions(config.bits, device)
    task_record = _task_record(config, task, backend)  # first: a model with no layer to search
    excluded = backend.search_exclusions(
        task.model, device, config.bits, task_record.layers, example=task.example_input()
    )
    threads = config.threads or torch.get_num_threads()
    latency = latency_context(
        config.latency,
        device=device,
        batch_size=config.batch_size,
        threads=config.latency_threads or (1 if device.type == "cpu" else threads),
        sample_ms=config.latency_sample_ms or None,
        decode=task.decode_record(),
    )
    protocol = Protocol(
        backend=backend.name,
        backend_version=backend.version(),
        backend_settings=backend.settings_record(),
        task=task_record,
        search=Search(
            precisions=config.bits,
            calibration_samples=_calibration_samples(backend, config.bits, task),
            granularity=config.granularity,  # type: ignore[arg-type]
            objective=config.objective,  # type: ignore[arg-type]
            max_size_mb=config.max_size_mb,
            max_latency_ms=config.max_latency_ms,
            excluded=excluded,
        ),
        gate=GateRule(max_drop=config.max_accuracy_drop, min_accuracy=config.min_accuracy),
        evaluation=Evaluation(
            batch_size=config.eval_batch_size,
            threads=threads,
            early_stop=config.early_stop,  # type: ignore[arg-type]
            first_chunk=config.eval_chunk,
        ),
        latency=latency,
        seed=config.seed,
        versions={
            "quide_search": __version__,
            "torch": torch.__version__,
            "optuna": optuna.__version__,
        },  # fmt: skip
    )
    protocol.search.check_groups(task_record.layers)  # before any study stores it
    return protocol


def on_backend(
    protocol: Protocol, name: str, task: Task, precisions: tuple[str, ...], device: torch.device
) -> Protocol:
    """``protocol`` with plans applied by the backend ``name`` instead of the study's.

    Everything that fixes P stays (splits, evaluation, gate); the backend, its version, the
    layers it quantizes (keeps in float, and leaves out of the search) and the precisions,
    with their calibration, are that backend's. For ``evaluate --backend``.

    Raises:
        PlanError: If the backend cannot run ``precisions`` on ``device``.
        ConfigError: If a precision needs calibration data the task lacks.
    """
    from quide_search.backends import get_backend

    backend = get_backend(name)
    backend.check_precisions(precisions, device)
    layers, kept = tuple(task.layers(backend)), backend.float_kinds(task.model)
    excluded = tuple(n for n in backend.quantizable_layers(task.model) if n in task.exclude)
    task_record = protocol.task.model_copy(
        update={"layers": layers, "kept_float": kept, "excluded": excluded}
    )
    search = protocol.search.model_copy(
        update={"precisions": precisions,
                "calibration_samples": _calibration_samples(backend, precisions, task)}
    )  # fmt: skip
    return protocol.model_copy(
        update={"backend": backend.name, "backend_version": backend.version(),
                "backend_settings": backend.settings_record(), "task": task_record,
                "search": search}
    )  # fmt: skip


def _calibration_samples(
    backend: QuantBackend, precisions: tuple[str, ...], task: Task
) -> int | None:
    """How many calibration samples fit static activation scales; None without such a
    precision. Refuse a calibrated precision on a task without a calibration split."""
    from quide_search.backends.calibration import CALIBRATION_SAMPLES

    if not backend.calibration_needed(precisions):
        return None
    available = len(task.splits.calib)
    if available == 0:
        calibrated = [p for p in precisions if backend.calibrated(p)]
        what = (
            f"{calibrated[0]} on the {backend.name} backend fits static activation scales on"
            if calibrated
            else f"the {backend.name} backend builds its graph on"
        )
        raise ConfigError(
            f"{what} the calibration split, but {task.model_name!r} on {task.dataset_name!r} "
            "has no calibration samples. Give the task calibration data"
            + (", or leave activations out (--activations none)." if calibrated else ".")
        )
    return min(CALIBRATION_SAMPLES, available)


def _task_record(config: RunConfig, task: Task, backend: QuantBackend) -> TaskRecord:
    """The task part of the protocol; refuse a model with no layer the backend quantizes."""
    layers = list(task.layers(backend))
    kept = backend.float_kinds(task.model)
    if isinstance(task.model, backend.layer_types()):
        kind = type(task.model).__name__
        raise ConfigError(
            f"--model must hold its layers as submodules, but {task.model_name!r} is itself "
            f"a {kind}, which a plan cannot name. Wrap it: torch.nn.Sequential(model)."
        )
    if not layers:
        others = ", ".join(f"{n} {kind}" for kind, n in kept.items()) or "none"
        raise ConfigError(
            f"--model must have at least one layer the {backend.name} backend quantizes "
            f"({', '.join(t.__name__ for t in backend.layer_types())}), but "
            f"{task.model_name!r} has none (its other layers with weights: {others}). "
            "Choose another model or backend."
        )
    text = config.task_options()["text"]
    return TaskRecord(
        model=task.model_name,
        dataset=task.dataset_name,
        kind=task.kind,
        splits=task.splits.describe(),
        layers=tuple(layers),
        fingerprint=task.fingerprint(),
        weights=config.weights,
        weights_origin=task.weights_origin,
        data_dir=config.data_dir,
        eval_samples=config.eval_samples,
        calib_samples=config.calib_samples,
        test_samples=config.test_samples,
        text=dataclasses.asdict(text) if text else None,
        kept_float=kept,
        excluded=tuple(n for n in backend.quantizable_layers(task.model) if n in task.exclude),
    )
