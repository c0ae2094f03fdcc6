"""The onnxruntime backend on this CPU: float ORT against PyTorch eager, plans against float ORT.

For each model (ResNet-18 on mnist-5k, SimpleCNN on digits) the backend builds, as a study
does (exported once, calibrated on the first 128 calibration samples, sessions at 1 thread):

- ``float``: the float graph (every layer float);
- ``w8a8``: every layer static int8 (uint8 activations, per-channel int8 weights);
- ``w8a8+int4``: convolutions w8a8, Linear layers weight-only int4 (MatMulNBits, block 128).

For ``llama``, a 4-block Llama built here (hidden 512, random weights, a 200-word vocabulary;
``lm_head`` left float as a study leaves it): ``float``, ``int8`` and ``int4`` (every block's
Linear layers weight-only), timed per generated token of a greedy decode with the KV cache
(a 16-token prompt, then 16 tokens: the T of a study), P the next-token accuracy.

Each is timed at batch 1 and 32 as the median of interleaved, order-rotated rounds (with
PyTorch eager float in the same rounds), and scored on the task's eval split. Reported: the
ratios against float ORT (and float ORT against eager), P, which kernels ran, and the
per-plan cost of a trial (build: quantize and open the session; P: the eval split).

Usage:  python benchmarks/ort_backend.py [--models resnet18,simplecnn,llama] [--rounds 40]
                                         [--write benchmarks/RESULTS.md]

(Not ``benchmarks/onnxruntime.py``: run as a script, a file of that name would be imported in
place of the onnxruntime library.)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from _models import saved_llama
from _results import machine_line, publish

from quide_search.backends.onnxruntime import OnnxRuntimeBackend
from quide_search.measure.evaluator import logits_of
from quide_search.plan import BitPlan
from quide_search.tasks.models.causal_lm import GreedyDecode
from quide_search.tasks.resolver import load_task
from quide_search.tasks.task import Task

DATASETS = {"simplecnn": "digits", "resnet18": "mnist-5k"}


def _plans(backend: OnnxRuntimeBackend, task: Task) -> dict[str, dict[str, str]]:
    layers = task.layers(backend)
    if task.decode is not None:
        return {"float": {}, "int8": dict.fromkeys(layers, "int8"),
                "int4": dict.fromkeys(layers, "int4")}  # fmt: skip
    linear = {n for n in layers if isinstance(task.model.get_submodule(n), torch.nn.Linear)}
    return {
        "float": {},
        "w8a8": dict.fromkeys(layers, "w8a8"),
        "w8a8+int4": {n: "int4" if n in linear else "w8a8" for n in layers},
    }


def _accuracy(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (a causal LM's: of every next token)."""
    with torch.no_grad():
        logits = torch.cat(
            [logits_of(model(inputs[i : i + 64])) for i in range(0, len(inputs), 64)]
        )
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


def _task(name: str, folder: Path) -> Task:
    if name == "llama":
        model, text = saved_llama(folder, hidden=512, new_tokens=16, eval_windows=32)
        return load_task(model=model, text=text)
    return load_task(model=name, dataset=DATASETS[name])


def _timed(task: Task, models: dict[str, Any], rounds: int) -> dict[str, dict[str, float]]:
    """ms per call (a causal LM's: per generated token) at batch 1 and 32, 1 thread."""
    decode = task.decode
    inputs = task.splits.eval.inputs
    if decode is not None:
        inputs = inputs[:, : decode["prompt_tokens"]]
        models = {n: GreedyDecode(m, decode["new_tokens"], decode["pad_token_id"])
                  for n, m in models.items()}  # fmt: skip
    per_call = decode["new_tokens"] if decode is not None else 1
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        timed = {}
        for batch in (1, 32):
            x = inputs[:1].repeat(batch, *([1] * (inputs.dim() - 1))) if decode else inputs[:batch]
            ms = _interleaved(models, x, rounds)
            timed[f"ms_b{batch}"] = {n: v / per_call for n, v in ms.items()}
        return timed
    finally:
        torch.set_num_threads(before)


def one_model(name: str, rounds: int, folder: Path) -> dict[str, Any]:
    task = _task(name, folder)
    backend = OnnxRuntimeBackend()
    evals = task.splits.eval
    calibration = task.splits.calib.first(128).inputs
    row: dict[str, Any] = {"model": name, "plans": {}}
    models: dict[str, Any] = {"eager": task.model}
    for label, layers in _plans(backend, task).items():
        plan = BitPlan(model=name, dataset="d", layers=layers, backend=backend.name)
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
    row.update(_timed(task, models, rounds))
    return row


def _lines(rows: list[dict[str, Any]], command: str) -> list[str]:
    out = [
        "## ONNX Runtime backend: float ORT against eager, plans against float ORT",
        "",
        machine_line(),
        f"- command: `{command}`",
        "- 1 thread; ms are medians of interleaved rounds (llama: per generated token of a "
        "greedy decode, 16 tokens after a 16-token prompt, batch 32 = 32 copies of the prompt); "
        "P on the task's eval split; build = "
        "quantize the plan and open its session, as each trial does (a model's first build, "
        "`float`, also exports it; its first `w8a8` build also calibrates, once per model)",
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
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=str, default="resnet18,simplecnn,llama")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--write", type=str, default=None, help="RESULTS.md to update")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [one_model(name, args.rounds, Path(tmp)) for name in args.models.split(",")]
    command = f"python benchmarks/ort_backend.py --models {args.models} --rounds {args.rounds}"
    publish(_lines(rows, command), args.write, "ort_backend")


if __name__ == "__main__":
    main()
