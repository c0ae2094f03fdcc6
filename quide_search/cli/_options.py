"""Argument groups shared by run, sweep and evaluate, and their conversion to RunConfig."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from quide_search.cli._types import gate_fraction, positive_int, sample_count, study_name
from quide_search.plan import parse_activations, parse_bits, with_activations

__all__ = [
    "add_device_arg",
    "add_gate_args",
    "add_measure_args",
    "add_activations_arg",
    "add_bits_arg",
    "add_storage_args",
    "add_study_args",
    "add_task_args",
    "add_budget_args",
    "budget_from_args",
    "config_from_args",
    "study_storage",
]


def add_task_args(parser: argparse.ArgumentParser) -> None:
    """Add --model and --dataset."""
    group = parser.add_argument_group("task")
    group.add_argument(
        "--model", type=str, default="simplecnn", help="registered model name (default: simplecnn)"
    )
    group.add_argument(
        "--dataset",
        type=str,
        default=None,
        help="registered dataset name (default: the model's first, or, where its files are "
        "missing, the first that needs none: simplecnn digits, resnet18 imagenet else mnist-5k)",
    )
    group.add_argument(
        "--data-dir",
        type=str,
        default=None,
        help="where dataset files live (default: $QUIDE_DATA_DIR or ./data)",
    )
    group.add_argument(
        "--download",
        action="store_true",
        help="let torchvision download a missing dataset into --data-dir",
    )
    group.add_argument(
        "--eval-samples",
        type=sample_count,
        default=None,
        help="at most this many eval samples: the first of the seeded eval split (default: "
        "all; imagenet: 10000)",
    )
    group.add_argument(
        "--calib-samples",
        type=sample_count,
        default=None,
        help="at most this many calibration samples, likewise (imagenet default: 512)",
    )
    group.add_argument(
        "--test-samples",
        type=sample_count,
        default=None,
        help="at most this many samples of the held-out test split that scores the finalists, "
        "for registered datasets (imagenet default: 10000; hf: text follows --eval-windows)",
    )
    _add_lm_args(parser)  # before --weights: the usage line keeps its order
    group.add_argument(
        "--weights",
        type=str,
        default=None,
        help="float state dict (.pt or .safetensors) to use instead of the cached training run",
    )


def _add_lm_args(parser: argparse.ArgumentParser) -> None:
    """The group of flags only causal language models read."""
    lm = parser.add_argument_group("Hugging Face causal LMs (--model hf:PATH_OR_ID)")
    lm.add_argument(
        "--text-file", type=str, default=None, help="UTF-8 text to score on (e.g. WikiText-2 raw)"
    )
    lm.add_argument(
        "--seq-len", type=positive_int, default=None, help="tokens per eval window (default: 512)"
    )
    lm.add_argument(
        "--eval-windows", type=positive_int, default=None, help="eval windows (default: 64)"
    )
    lm.add_argument(
        "--dtype",
        type=str,
        choices=("auto", "float32", "float16", "bfloat16"),
        default=None,
        help="model dtype (default: auto = float32 on CPU, the model's own on GPU)",
    )
    lm.add_argument(
        "--include-head", action="store_true", help="quantize lm_head too (default: excluded)"
    )
    lm.add_argument(
        "--granularity",
        type=str,
        choices=("layer", "block", "type"),
        default="layer",
        help="one bit-width choice per layer, per numbered block, or per layer type "
        "(all q_proj share one) (default: layer)",
    )


def add_gate_args(parser: argparse.ArgumentParser) -> None:
    """Add the accuracy-gate flags; defaults are suppressed to tell 'given' from 'default'."""
    group = parser.add_argument_group("accuracy gate (I' = 0 when it fails)")
    group.add_argument(
        "--max-accuracy-drop",
        type=gate_fraction,
        default=argparse.SUPPRESS,
        help="pass when P >= P_float - DROP (default 0.01 unless --min-accuracy)",
    )
    group.add_argument(
        "--min-accuracy",
        type=gate_fraction,
        default=argparse.SUPPRESS,
        help="pass when P >= this absolute floor; alone it replaces the drop rule",
    )


def add_device_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add --device auto|cpu|cuda."""
    parser.add_argument(
        "--device",
        type=str,
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to evaluate and time (default: auto = cuda if available)",
    )


def add_measure_args(parser: argparse.ArgumentParser) -> None:
    """Add the flags of how P and T are measured: device, batches, threads, T's source."""
    group = parser.add_argument_group("measurement")
    add_device_arg(group)
    group.add_argument(
        "--batch-size",
        type=positive_int,
        default=1,
        help="batch size of the latency measurement, recorded with T (default: 1)",
    )
    group.add_argument(
        "--eval-batch-size",
        type=positive_int,
        default=256,
        help="batch size of the accuracy pass; does not change P (default: 256)",
    )
    group.add_argument(
        "--eval-chunk",
        type=positive_int,
        default=None,
        help="samples in the first accuracy chunk, where early stopping first looks "
        "(default: fitted to the measured cost of a forward call, stored with the study)",
    )
    group.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch threads, fixed for the run and recorded with T (default: torch's choice)",
    )
    group.add_argument(
        "--force-threads",
        action="store_true",
        help="allow --threads or --latency-threads above the machine's cores",
    )
    group.add_argument(
        "--latency-threads",
        type=positive_int,
        default=None,
        help="torch threads that T alone is timed with, recorded with T; evaluation keeps "
        "--threads (default: 1 on a CPU, where other processes then move T least; "
        "--threads on a GPU)",
    )
    group.add_argument(
        "--latency-sample-ms",
        type=float,
        default=5.0,
        help="on a CPU, each timed sample runs passes back to back until it spans this many "
        "ms, so small models' T repeats; lower is faster, 0 times single passes (stored with "
        "the study; default: 5)",
    )
    group.add_argument(
        "--cache-mb",
        type=float,
        default=4096.0,
        help="memory bound on the cached quantized layers trials are assembled from "
        "(default: 4096)",
    )
    _add_source_args(group)


def _add_source_args(group: argparse._ArgumentGroup) -> None:
    """--latency (where T comes from) and --backend (what applies plans)."""
    group.add_argument(
        "--latency",
        type=str,
        default="auto",
        help="where T comes from: 'measured' on --device; 'table', each (layer, precision) "
        "timed once on --device and summed (stored in the study; 'table:PATH' reuses a saved "
        "table); 'model:PROFILE', an analytic estimate for a target device (cpu-epyc-2c, "
        "gpu-h100-sxm); 'auto': measured on CUDA, table on a CPU (default: auto)",
    )
    from quide_search.backends import BACKENDS

    group.add_argument(
        "--backend",
        type=str,
        choices=tuple(BACKENDS),
        default="quanto",
        help="the quantization library that applies plans: quanto (int8, int4, int2, fp8 "
        "weights; int8 or fp8 activations with static calibrated scales; Linear and Conv2d) "
        "or torchao (int8, int4 and w8a8: int8 weights and "
        "dynamic int8 activations; Linear) (default: quanto)",
    )


def add_bits_arg(group: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add --bits, the per-layer choices of a search."""
    group.add_argument(
        "--bits",
        type=str,
        default=None,
        help="per-layer weight precisions: int8 (8), int4 (4), int2 (2), fp8 (f8), float "
        "(fp: keep the layer in float), or weights and activations W{8,4,2,f8}A{8,f8} such as "
        "w8a8 (default: those of int8, int4, int2 the backend runs on the device: 8,4,2 for "
        "quanto, 8,4 for torchao on a CPU)",
    )
    add_activations_arg(group)


def add_activations_arg(group: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add --activations, the activation precisions each --bits entry is paired with."""
    group.add_argument(
        "--activations",
        type=str,
        default="none",
        help="activation precisions: none (float, weight-only), int8, fp8; each --bits entry "
        "is tried with each, e.g. --bits 8,4 --activations none,int8 searches int8, w8a8, "
        "int4, w4a8. quanto calibrates static scales on the calibration split; torchao's "
        "w8a8 is dynamic (default: none)",
    )


def add_storage_args(parser: argparse.ArgumentParser) -> None:
    """Add --study, --storage and --out-dir of a study that may be created."""
    study = parser.add_argument_group("study storage")
    study.add_argument(
        "--study", type=study_name, default=None, help="study name (default: <model>-<dataset>)"
    )
    study.add_argument(
        "--storage",
        type=str,
        default=None,
        help="Optuna storage URL or journal:PATH (default: sqlite:///studies/<study>.db)",
    )
    study.add_argument(
        "--out-dir",
        type=str,
        default="studies",
        help="directory of the default storage and the Pareto JSON",
    )


def add_study_args(parser: argparse.ArgumentParser) -> None:
    """Add --study (required) and --storage, for the commands that read one study."""
    parser.add_argument("--study", type=study_name, required=True, help="name of the study")
    parser.add_argument(
        "--storage",
        type=str,
        default=None,
        help="storage URL (default: sqlite:///studies/<study>.db)",
    )


def study_storage(args: argparse.Namespace) -> str:
    """The storage URL of ``--study``: ``--storage`` or the default SQLite file."""
    from quide_search.study.storage import default_storage_url

    return str(args.storage or default_storage_url(study=args.study))


def _bits(args: argparse.Namespace) -> tuple[str, ...] | None:
    """--bits paired with --activations; where --bits is not given, the backend's default
    for the device (:meth:`QuantBackend.default_bits`: the weight-only int8, int4 and int2 it
    runs there, for quanto and torchao)."""
    if not hasattr(args, "bits"):
        return None
    activations = parse_activations(getattr(args, "activations", None) or "none")
    if args.bits is not None:
        return with_activations(parse_bits(args.bits), activations)
    from quide_search.backends import get_backend
    from quide_search.measure.device import resolve_device
    from quide_search.tasks.catalog import names_causal_lm

    backend = get_backend(args.backend)
    bits = backend.default_bits(resolve_device(args.device), activations,
                                causal_lm=names_causal_lm(args.model))  # fmt: skip
    return with_activations(bits, activations)


def _check_lm_only(config: Any, flags: dict[str, Any]) -> None:
    """Refuse flags only causal LMs read, given for another model (they would do nothing).

    Raises:
        ConfigError: Naming the flags given and the model.
    """
    from quide_search.errors import ConfigError

    given = [f"--{k.replace('_', '-')}" for k, v in flags.items() if v is not None]
    if given and not config.reads_text:
        one = len(given) == 1
        raise ConfigError(
            f"{', '.join(given)} {'is' if one else 'are'} read only by causal language models "
            f"(hf: paths and smollm2-135m), but --model {config.model!r} is not one. Drop "
            f"{'it' if one else 'them'}, or name a language model."
        )


def config_from_args(args: argparse.Namespace, **extra: Any) -> Any:
    """Build the validated RunConfig from parsed arguments (CLI > defaults), in one call.

    Every RunConfig field is read from the argument of the same name; an argument left at
    None takes the field's default. Beyond that, only what a flag means beyond its value is
    worked out here: the dataset a model defaults to, ``--bits`` paired with
    ``--activations``, and the gate's default drop where neither gate flag is given.
    ``extra`` sets fields a command fixes or names otherwise (``sweep --name`` is the study).
    """
    from dataclasses import fields

    from quide_search.config import RunConfig
    from quide_search.tasks.catalog import check_names, default_dataset

    check_names(args.model, args.dataset)  # before anything imports torch: a typo answers at once
    given = vars(args)
    values: dict[str, Any] = {
        f.name: given[f.name] for f in fields(RunConfig) if given.get(f.name) is not None
    }
    bits = _bits(args)
    if bits is not None:
        values["bits"] = bits
    if args.dataset is None:
        values["dataset"], note = default_dataset(args.model, args.data_dir)
        if note:
            print(note, file=sys.stderr)
    drop, floor = given.get("max_accuracy_drop"), given.get("min_accuracy")
    # None is meant here: a floor given alone replaces the drop rule.
    values.update(max_accuracy_drop=0.01 if drop is None and floor is None else drop,
                  min_accuracy=floor)  # fmt: skip
    config = RunConfig(**{**values, **extra})
    lm_only = {k: given.get(k) for k in ("seq_len", "eval_windows", "dtype")}
    _check_lm_only(config, {**lm_only, "include_head": args.include_head or None})
    return config


def add_budget_args(parser: argparse.ArgumentParser, *, what: str) -> None:
    """Add --max-size-mb and --max-latency-ms, answered from the stored trials."""
    parser.add_argument(
        "--max-size-mb",
        type=float,
        default=None,
        help=f"{what} the best stored plan passing the gate with weights at most this (MiB)",
    )
    parser.add_argument(
        "--max-latency-ms",
        type=float,
        default=None,
        help=f"{what} the best stored plan passing the gate with T at most this (ms)",
    )


def budget_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~quide_search.study.budget.Budget` of --max-size-mb/--max-latency-ms."""
    from quide_search.study.budget import Budget

    return Budget(max_size_mb=args.max_size_mb, max_latency_ms=args.max_latency_ms)
