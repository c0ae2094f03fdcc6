"""The onnxruntime backend on this CPU: float ORT against PyTorch eager, plans against float ORT.

For each model (ResNet-18 on mnist-5k, SimpleCNN on digits) the backend builds, as a study
does (exported once, calibrated on the first 128 calibration samples, sessions at 1 thread):

- ``float``: the float graph (every layer float);
- ``w8a8``: every layer static int8 (uint8 activations, per-channel int8 weights);
- ``w8a8+int4``: convolutions w8a8, Linear layers weight-only int4 (MatMulNBits, block 128).

Each is timed at batch 1 and 32 as the median of interleaved, order-rotated rounds (with
PyTorch eager float in the same rounds), and scored on the task's eval split. Reported: the
ratios against float ORT (and float ORT against eager), P, which kernels ran, and the
per-plan cost of a trial (build: quantize and open the session; P: the eval split).

Usage:  python benchmarks/ort_backend.py [--models resnet18,simplecnn] [--rounds 40]
                                         [--write benchmarks/RESULTS.md]

(Not ``benchmarks/onnxruntime.py``: run as a script, a file of that name would be imported in
place of the onnxruntime library.)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from typing import Any

import torch
from _results import machine_line, publish

from quide_search.backends.onnxruntime import OnnxRuntimeBackend
from quide_search.plan import BitPlan
from quide_search.tasks.resolver import load_task

DATASETS = {"simplecnn": "digits", "resnet18": "mnist-5k"}


def _plans(backend: OnnxRuntimeBackend, model: torch.nn.Module) -> dict[str, dict[str, str]]:
    layers = backend.quantizable_layers(model)
    linear = {n for n in layers if isinstance(model.get_submodule(n), torch.nn.Linear)}
    return {
        "float": {},
        "w8a8": dict.fromkeys(layers, "w8a8"),
        "w8a8+int4": {n: "int4" if n in linear else "w8a8" for n in layers},
    }


def _accuracy(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        logits = torch.cat([model(inputs[i : i + 256]) for i in range(0, len(inputs), 256)])
    return float((logits.argmax(-1) == labels).float().mean())


def _interleaved(models: dict[str, Any], x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median ms per call of each model, timed in turn, each round starting one later."""
    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.no_grad():
        for model in models.values():
            for _ in range(3):
                model(x)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                start = time.perf_counter()
                models[name](x)
                times[name].append((time.perf_counter() - start) * 1e3)
    return {n: statistics.median(v) for n, v in times.items()}


def one_model(name: str, rounds: int) -> dict[str, Any]:
    task = load_task(model=name, dataset=DATASETS[name])
    backend = OnnxRuntimeBackend()
    evals = task.splits.eval
    calibration = task.splits.calib.first(128).inputs
    row: dict[str, Any] = {"model": name, "plans": {}}
    models: dict[str, Any] = {"eager": task.model}
    for label, layers in _plans(backend, task.model).items():
        plan = BitPlan(model=name, dataset=DATASETS[name], layers=layers, backend=backend.name)
        started = time.perf_counter()
        built = backend.build(task.model, plan, calibration=calibration, threads=1)
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        p = _accuracy(built.module, evals.inputs, evals.labels)
        row["plans"][label] = {
            "P": p, "build_s": build_s, "P_s": time.perf_counter() - started,
            "kernels": dict(Counter(built.kernels.values())), "bytes": built.stored_bytes,
        }  # fmt: skip
        models[label] = built.module
    row["eager_P"] = _accuracy(task.model, evals.inputs, evals.labels)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for batch in (1, 32):
            x = evals.inputs[:batch]
            row[f"ms_b{batch}"] = _interleaved(models, x, rounds)
    finally:
        torch.set_num_threads(before)
    return row


def _lines(rows: list[dict[str, Any]], command: str) -> list[str]:
    out = [
        "## ONNX Runtime backend: float ORT against eager, plans against float ORT",
        "",
        machine_line(),
        f"- command: `{command}`",
        "- 1 thread; ms are medians of interleaved rounds; P on the task's eval split; build = "
        "quantize the plan and open its session, as each trial does (a model's first build, "
        "`float`, also exports it; its first `w8a8` build also calibrates, once per scorer)",
        "",
        "| model | plan | ms b1 | ms b32 | vs float ORT b1 | b32 | P | kernels | build s | P s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b1, b32 = r["ms_b1"], r["ms_b32"]
        out.append(
            f"| {r['model']} | eager (PyTorch) | {b1['eager']:.3f} | {b32['eager']:.3f} | "
            f"{b1['eager'] / b1['float']:.2f}× | {b32['eager'] / b32['float']:.2f}× | "
            f"{r['eager_P']:.4f} | - | - | - |"
        )
        for label, p in r["plans"].items():
            ran = p["kernels"].items()
            kernels = ", ".join(f"{n} {k.removeprefix('kernel:')}" for k, n in ran)
            out.append(
                f"| {r['model']} | {label} | {b1[label]:.3f} | {b32[label]:.3f} | "
                f"{b1[label] / b1['float']:.2f}× | {b32[label] / b32['float']:.2f}× | "
                f"{p['P']:.4f} | {kernels or '-'} | {p['build_s']:.2f} | {p['P_s']:.2f} |"
            )
    out += [
        "",
        "The 4-block Llama of issue #33 is not here: causal LMs do not run through the "
        "onnxruntime backend yet (issue #33, point 6).",
    ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=str, default="resnet18,simplecnn")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--write", type=str, default=None, help="RESULTS.md to update")
    args = parser.parse_args()
    rows = [one_model(name, args.rounds) for name in args.models.split(",")]
    command = f"python benchmarks/ort_backend.py --models {args.models} --rounds {args.rounds}"
    publish(_lines(rows, command), args.write, "ort_backend")


if __name__ == "__main__":
    main()
