"""ONNX Runtime on this CPU: the float model against static int8 QDQ, before the backend exists.

Issue #33 rests on figures measured by hand on two other CPUs. This script measures them
again on whatever CPU runs it, for the quantized settings the backend is to choose, so that
a backend can be checked against them:

- ``u8s8``: uint8 activations, int8 per-channel weights (what the issue says fuses convs);
- ``s8s8``: int8 activations (ORT's default, which the issue says leaves convs unfused);
- each with ``reduce_range`` as the issue prescribes for a CPU without VNNI.

For each model it reports P on the task's eval split, the count of fused int8 kernels in the
graph ORT optimises (QLinearConv, QLinearMatMul, QGemm, ConvInteger, MatMulInteger), and T
at 1 thread, batch 1 and 32, as the median of interleaved rounds (float and each variant in
turn, so the machine's slow spells fall on all of them).

Needs ``onnxruntime`` and ``onnx`` (not dependencies of quide-search yet).

Usage:  python benchmarks/ort_int8.py [--models simplecnn,resnet18] [--rounds 30]
                                      [--write benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _results import machine_line, publish

from quide_search.backends.cpu import cpu_flags, has_vnni
from quide_search.tasks.resolver import load_task

DATASETS = {"simplecnn": "digits", "resnet18": "mnist-5k"}
FUSED = ("QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger")


def export(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """The TorchScript exporter, with a dynamic batch (node names follow module paths)."""
    torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
                      opset_version=17)  # fmt: skip


def quantize(src: Path, dst: Path, calib: np.ndarray, *, activations: str, reduce: bool) -> None:
    """Static QDQ quantization calibrated on ``calib`` (per-channel int8 weights)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": calib[i : i + 16]} for i in range(0, len(calib), 16)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    act = QuantType.QUInt8 if activations == "u8" else QuantType.QInt8
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=act, weight_type=QuantType.QInt8, per_channel=True,
                    reduce_range=reduce)  # fmt: skip


def session(path: Path, optimized: Path | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def fused(optimized: Path) -> dict[str, int]:
    import onnx

    ops = [n.op_type for n in onnx.load(str(optimized)).graph.node]
    return {op: ops.count(op) for op in FUSED if op in ops}


def accuracy(sess: Any, inputs: np.ndarray, labels: np.ndarray) -> float:
    logits = np.concatenate([sess.run(None, {"x": inputs[i : i + 256]})[0]
                             for i in range(0, len(inputs), 256)])  # fmt: skip
    return float((logits.argmax(-1) == labels).mean())


def interleaved(sessions: dict[str, Any], x: np.ndarray, rounds: int) -> dict[str, float]:
    """Median ms per call of each session, timed in turn for ``rounds`` rounds."""
    for s in sessions.values():
        for _ in range(3):
            s.run(None, {"x": x})
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for r in range(rounds):
        names = list(sessions)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            sessions[name].run(None, {"x": x})
            times[name].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def one_model(name: str, rounds: int, folder: Path) -> dict[str, Any]:
    task = load_task(model=name, dataset=DATASETS[name])
    evals = task.splits.eval
    inputs, labels = evals.inputs.numpy().astype(np.float32), evals.labels.numpy()
    calib = task.splits.calib.inputs[:128].numpy().astype(np.float32)
    src = folder / f"{name}.onnx"
    export(task.model, task.splits.eval.inputs[:1], src)
    vnni = has_vnni(cpu_flags())
    variants = {"float": src}
    for act in ("u8", "s8"):
        path = folder / f"{name}-{act}s8.onnx"
        quantize(src, path, calib, activations=act, reduce=not vnni)
        variants[f"{act}s8"] = path
    row: dict[str, Any] = {"model": name, "reduce_range": not vnni, "variants": {}}
    sessions = {}
    for label, path in variants.items():
        optimized = folder / f"{path.stem}.opt.onnx"
        sessions[label] = session(path, optimized)
        row["variants"][label] = {"P": accuracy(sessions[label], inputs, labels),
                                  "fused": fused(optimized)}  # fmt: skip
    for batch in (1, 32):
        x = np.ascontiguousarray(np.repeat(inputs[:1], batch, axis=0) if batch > len(inputs)
                                 else inputs[:batch])  # fmt: skip
        ms = interleaved(sessions, x, rounds)
        for label in sessions:
            row["variants"][label][f"ms_b{batch}"] = ms[label]
    eager = _eager_ms(task.model, torch.from_numpy(inputs[:1]), rounds)
    row["eager_ms_b1"] = eager
    return row


def _eager_ms(model: torch.nn.Module, x: torch.Tensor, rounds: int) -> float:
    """PyTorch eager float at 1 thread, batch 1 (the search's float T)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for _ in range(3):
                model(x)
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(before)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=str, default="simplecnn,resnet18")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--write", type=str, default=None, help="RESULTS.md to update")
    args = parser.parse_args()
    import onnxruntime

    with tempfile.TemporaryDirectory() as tmp:
        rows = [one_model(m, args.rounds, Path(tmp)) for m in args.models.split(",")]
    lines = [
        "## ONNX Runtime: float against static int8 QDQ (before the backend, issue #33)",
        "",
        machine_line() + f", onnxruntime {onnxruntime.__version__}",
        f"- command: `python benchmarks/ort_int8.py --models {args.models} --rounds "
        f"{args.rounds}` (1 thread; medians of interleaved rounds; eager = PyTorch float)",
        "",
        "| model | variant | reduce_range | P | fused int8 kernels | ms b1 | vs ORT float b1 "
        "| ms b32 | vs ORT float b32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = r["variants"]["float"]
        lines.append(f"| {r['model']} | eager float | - | - | - | {r['eager_ms_b1']:.3f} | "
                     f"{r['eager_ms_b1'] / base['ms_b1']:.2f} | - | - |")  # fmt: skip
        for label, v in r["variants"].items():
            kernels = ", ".join(f"{k} {n}" for k, n in v["fused"].items()) or "none"
            lines.append(
                f"| {r['model']} | {label} | {r['reduce_range'] if label != 'float' else '-'} "
                f"| {v['P']:.4f} | {kernels} | {v['ms_b1']:.3f} | "
                f"{v['ms_b1'] / base['ms_b1']:.2f} | {v['ms_b32']:.3f} | "
                f"{v['ms_b32'] / base['ms_b32']:.2f} |"
            )
    publish(lines, args.write, "ort_int8")


if __name__ == "__main__":
    main()
