"""GPU check: CUDA-event latency of quanto plans on a ~1B Llama built from a config, and a study.

On one GPU, for a Llama-style model of about 1.1 B parameters with random weights (nothing is
downloaded), in float16 and bfloat16:

1. Uniform plans (float, int8, int4, float8): P, T by CUDA events for a one-token forward pass
   (decode) and a 256-token one (prefill), the same plan's decode T measured a second time,
   the analytic estimate of ``--latency model:gpu-h100-sxm`` for both shapes, and how many
   layers ran a real low-bit kernel rather than quanto's dequantizing fallback.
2. How well the estimate ranks the uniform plans against measured T where kernels exist.
3. A ``quide-search run`` study of ``--trials`` trials on the bfloat16 model (int4 runs there
   through tinygemm; float16 int4 needs AWQ's GEMV kernel, which crashed: see
   ``QuantoBackend.hazard``, which the run and this script both consult).

P is the top-1 next-token agreement with the float model on 16 random windows of 128 tokens:
with random weights there is no task accuracy to measure, only fidelity to the float model.
The gate of the study is P >= 1 - ``--max-drop``.

optimum-quanto's int4 and float8 kernels live in its CUDA extension, which it compiles on first
use. That compile starts in the background at once and the int4/float8 plans wait for it; if
it fails or runs past the budget, those plans are reported as missing with the reason.

4. With ``--parts`` naming ``torchao`` (the default runs both): torchao's uniform int8, int4,
   w8a8 and float8 plans against bf16, compiled, one-token decode step by CUDA events
   (``benchmarks/_gpu_torchao.py``), within ``--torchao-budget-s``. Each part fits one
   10-minute command; where commands are limited so, run ``--parts quanto`` and ``--parts
   torchao`` as two.

Without CUDA the script says so and runs the tiny config on the CPU: that checks the script,
and its numbers say nothing about a GPU.

Usage:  python benchmarks/gpu_check.py [--size 1b|tiny] [--trials 20] [--budget-s 450]
                                       [--json PATH] [--max-drop 0.05]
                                       [--parts quanto,torchao] [--torchao-budget-s 420]
                                       [--torchao-compile max-autotune|reduce-overhead|none]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _gpu_torchao import torchao_decode, torchao_table
from torch import nn

from quide_search.backends import get_backend
from quide_search.config import RunConfig
from quide_search.latency import MeasuredLatency
from quide_search.latency._probe import layer_shapes
from quide_search.latency.analytic import estimate_ms
from quide_search.latency.profiles import profile
from quide_search.measure.scorer import Scorer
from quide_search.protocol_builder import build_protocol
from quide_search.tasks.models.custom import CustomTask
from quide_search.tasks.resolver import load_task

CONFIGS: dict[str, dict[str, int]] = {
    "1b": {  # the shape of TinyLlama-1.1B: 22 blocks, 154 Linear layers + lm_head
        "vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632,
        "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
    },
    "tiny": {
        "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    },
}  # fmt: skip
UNIFORM = ("float", "int8", "int4", "fp8")
NEEDS_EXTENSION = ("int4", "fp8")  # on CUDA: packing, AWQ/tinygemm/Marlin kernels
SHAPES = {"decode": 1, "prefill": 256}
WINDOWS, WINDOW_TOKENS = 16, 128
PROFILE = "gpu-h100-sxm"
FACTORY = "gpu_check:llama_task"
COMPILE_WAIT_S = 300.0
STUDY_DTYPE = torch.bfloat16  # int4 through tinygemm, float8 through Marlin
_STATE: dict[str, Any] = {"models": {}}
_STARTED = time.monotonic()


def _elapsed() -> float:
    return time.monotonic() - _STARTED


def build_model(size: str, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """A Llama-style causal LM with seeded random weights, built on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**CONFIGS[size], max_position_embeddings=512)
    with device:
        model = LlamaForCausalLM(config)
    return model.to(dtype).eval()


def agreement(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """P: the share of positions where ``model``'s top-1 next token is the float model's."""
    hits = 0
    for start in range(0, inputs.shape[0], 4):
        logits = model(inputs[start : start + 4]).logits
        hits += int((logits.argmax(-1) == labels[start : start + 4]).sum())
    return hits / labels.numel()


def llama_task() -> CustomTask:
    """The ``--model gpu_check:llama_task`` factory: the model of the current dtype."""
    dtype, device = _STATE["dtype"], _STATE["device"]
    if dtype not in _STATE["models"]:
        _STATE["models"][dtype] = build_model(_STATE["size"], dtype, device)
    model = _STATE["models"][dtype]
    vocab = model.config.vocab_size
    tokens = torch.randint(0, vocab, (2 * WINDOWS, WINDOW_TOKENS), generator=_seeded())
    with torch.no_grad():
        labels = torch.cat([model(t.to(device)).logits.argmax(-1).cpu() for t in tokens.split(4)])
    return CustomTask(
        model=model,
        eval_inputs=tokens[:WINDOWS],
        eval_labels=labels[:WINDOWS],
        calib_inputs=tokens[WINDOWS:],
        calib_labels=labels[WINDOWS:],
        example=tokens[:1, : SHAPES["decode"]],
        score=agreement,
        name="random-tokens",
    )


def _seeded() -> torch.Generator:
    return torch.Generator().manual_seed(0)


class Extension:
    """optimum-quanto's CUDA extension, compiled in a background process."""

    def __init__(self, device: torch.device, log: Path) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.log = log
        self.state = "not needed (no CUDA)"
        if device.type != "cuda":
            return
        # The same arch list here and in the compiling process, or loading it here would see
        # other flags and compile again.
        major, minor = torch.cuda.get_device_capability(device)
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
        env = {**os.environ, "MAX_JOBS": os.environ.get("MAX_JOBS", str(os.cpu_count() or 4))}
        code = (
            "from optimum.quanto.library.extensions import get_extension; "
            "get_extension('quanto_cuda').lib"
        )
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        self.state = "compiling"
        self.started = time.monotonic()

    def ready(self, wait_s: float) -> bool:
        """Wait up to ``wait_s`` for the compile; True once the extension is built."""
        if self.process is None:
            return True
        if self.state == "compiling":
            try:
                code = self.process.wait(timeout=max(wait_s, 0.0))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.state = f"compile still running after {time.monotonic() - self.started:.0f} s"
                return False
            seconds = time.monotonic() - self.started
            tail = self.log.read_text(errors="replace")[-600:]
            self.state = f"built in {seconds:.0f} s" if code == 0 else f"failed: {tail}"
        return self.state.startswith("built")


def uniform(scorer: Scorer, precision: str, example_tokens: torch.Tensor) -> dict[str, Any]:
    """Measure one uniform plan: P, T for both shapes (decode twice), estimates, kernels."""
    plan = scorer.uniform_plan(precision)
    m = scorer.measure(plan)
    row: dict[str, Any] = {
        "precision": precision, "P": m.P, "stored_bytes": m.stored_bytes,
        "C": scorer.baseline_bytes / m.stored_bytes, "T_decode_ms": m.T_ms,
        "latency_repeats": m.latency_repeats, "latency_spread": m.latency_spread,
        "kernel_layers": len(m.kernel_layers), "fallback_layers": len(m.fallback_layers),
        "seconds": m.seconds,
    }  # fmt: skip
    examples = {s: example_tokens[:1, :n].to(scorer.device) for s, n in SHAPES.items()}
    layers = list(scorer.weight_counts)
    shapes = {s: layer_shapes(scorer.model, x, layers) for s, x in examples.items()}
    row["kernels"] = sorted(set(scorer.cache.kernel_paths(plan).values()))
    weights = scorer.cache.layer_bytes(plan)
    for shape in SHAPES:
        row[f"T_{shape}_model_ms"] = estimate_ms(weights, shapes[shape], profile(PROFILE), 1)
    prefill = dataclasses.replace(scorer.target, example=examples["prefill"])
    row["T_prefill_ms"] = MeasuredLatency(scorer.latency.context, prefill).latency(plan).median_ms
    row["T_decode_again_ms"] = scorer.time_plan(plan).median_ms
    row["T_decode_repeat_diff"] = abs(row["T_decode_again_ms"] / row["T_decode_ms"] - 1)
    return row


def rank_agreement(rows: list[dict[str, Any]], shape: str) -> dict[str, Any]:
    """Pairs of kernel-backed plans that measured T and the estimate put in the same order."""
    kept = [r for r in rows if r["precision"] == "float" or r["fallback_layers"] == 0]
    pairs = agree = ties = 0
    for i, a in enumerate(kept):
        for b in kept[i + 1 :]:
            pairs += 1
            measured = a[f"T_{shape}_ms"] - b[f"T_{shape}_ms"]
            modelled = a[f"T_{shape}_model_ms"] - b[f"T_{shape}_model_ms"]
            agree += measured * modelled > 0
            ties += modelled == 0
    plans = [r["precision"] for r in kept]
    return {"plans": plans, "pairs": pairs, "same_order": agree, "model_ties": ties}


def study(
    args: argparse.Namespace, device: torch.device, bits: tuple[str, ...], trials: int
) -> dict[str, Any]:
    """Run the engine (``quide-search run``) on the bfloat16 model; return what it found."""
    from quide_search.study import load_study, run_search

    _STATE["dtype"] = STUDY_DTYPE
    with tempfile.TemporaryDirectory() as folder:
        config = RunConfig(
            model=FACTORY, device=device.type, trials=trials, bits=bits, seed=0,
            study="gpu-check", out_dir=folder, max_accuracy_drop=args.max_drop,
        )  # fmt: skip
        t0 = time.perf_counter()
        summary = run_search(config, progress=False, echo=lambda line: print("  " + line))
        seconds = time.perf_counter() - t0
        stored = load_study(study=config.study_name, storage=config.storage_url)
    counted = [t for t in stored.trials if "seconds" in t.user_attrs]
    split = {
        key: sorted(t.user_attrs["seconds"][key] for t in counted)[len(counted) // 2]
        for key in ("assemble", "evaluate", "latency")
    }
    best = summary.best.to_dict() if summary.best else {}
    return {
        "bits": list(bits), "seconds": seconds, "completed": summary.completed,
        "pruned": summary.pruned, "failed": summary.failed, "median_trial_s": split,
        "best": {k: best.get(k) for k in ("I_prime", "C", "P", "T_ms", "avg_weight_bits")},
        "sensitivity_s": stored.user_attrs.get("sensitivity", {}).get("seconds"),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(CONFIGS), default=None)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--budget-s", type=float, default=450.0)
    parser.add_argument("--max-drop", type=float, default=0.05)
    parser.add_argument("--json", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--parts", type=_parts, default="quanto,torchao",
                        help="quanto, torchao or both, each with its own time budget")  # fmt: skip
    parser.add_argument("--torchao-budget-s", type=float, default=420.0)
    parser.add_argument("--torchao-compile", default=None, help="torch.compile mode, or none")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        print("gpu_check: no CUDA device here; running the tiny config on the CPU instead. "
              "Its numbers check the script and say nothing about a GPU.", flush=True)  # fmt: skip
    sys.modules.setdefault("gpu_check", sys.modules[__name__])  # the factory's module
    _STATE.update(size=args.size or ("1b" if cuda else "tiny"), device=device)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__, "size": _STATE["size"], "uniform": {}, "ranking": {},
        "parameters": None, "layers": None,
    }  # fmt: skip
    if "quanto" in args.parts:  # first: quanto's CUDA extension compile starts at once
        _quanto_part(args, results, device, time.monotonic() + args.budget_s)
    if "torchao" in args.parts:
        _torchao_part(args, results, device)
    print(_table(results))


def _parts(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    if not parts or set(parts) - {"quanto", "torchao"}:
        raise argparse.ArgumentTypeError(f"must list quanto and/or torchao, not {text!r}")
    return parts


def _torchao_part(args: argparse.Namespace, results: dict[str, Any], device: torch.device) -> None:
    mode = args.torchao_compile or ("max-autotune" if device.type == "cuda" else "none")
    rows = torchao_decode(
        lambda: build_model(_STATE["size"], torch.bfloat16, device),
        device,
        time.monotonic() + args.torchao_budget_s,
        compile_mode=None if mode == "none" else mode,
    )
    results["torchao"] = {"compile": mode, "rows": rows}
    _save(args.json, results)


def _quanto_part(
    args: argparse.Namespace, results: dict[str, Any], device: torch.device, deadline: float
) -> None:
    extension = Extension(device, args.json.with_suffix(".compile.log"))
    _uniform_plans(results, extension, device, deadline)
    results["extension"] = extension.state
    _save(args.json, results)
    trials = _study_trials(results, args.trials, deadline - time.monotonic())
    print(f"uniform plans done at {_elapsed():.0f} s; study of {trials} trials", flush=True)
    if trials >= 5:
        bits = ("int8", "int4", "fp8") if extension.ready(0) else ("int8",)
        results["study"] = study(args, device, bits, trials)
    else:
        results["study"] = f"skipped: {trials} trials fit in the time left"
    _save(args.json, results)


def _uniform_plans(
    results: dict[str, Any], extension: Extension, device: torch.device, deadline: float
) -> None:
    """Build both models and their int8 layers while the extension compiles, then time plans.

    Nothing is timed while the compile runs: on a launch-bound model, compiler jobs on the
    same CPU would slow the timed passes.
    """
    scorers: dict[torch.dtype, Scorer] = {}
    config = RunConfig(model=FACTORY, device=device.type, latency="measured", bits=("int8",))
    for dtype in (torch.bfloat16, torch.float16):
        _STATE["dtype"] = dtype
        task = load_task(model=FACTORY)
        protocol = build_protocol(config, task, device=device)
        scorers[dtype] = scorer = Scorer.build(task, protocol, device=device)
        scorer.cache.assemble(scorer.uniform_plan("int8"))
        results["uniform"][str(dtype)] = []
    results["parameters"] = sum(p.numel() for p in scorer.model.parameters())
    results["layers"] = len(scorer.weight_counts)
    print(f"models built at {_elapsed():.0f} s; waiting for the extension", flush=True)
    built = extension.ready(min(COMPILE_WAIT_S, deadline - time.monotonic() - 240))
    print(f"extension {extension.state[:200]} at {_elapsed():.0f} s", flush=True)
    tokens = torch.randint(0, 10**9, (1, max(SHAPES.values())), generator=_seeded())
    for dtype, scorer in scorers.items():
        rows = results["uniform"][str(dtype)]
        for precision in UNIFORM:
            hazard = get_backend("quanto").hazard(scorer.model, device, [precision])
            if hazard is not None:  # it would end the process, not just fail the plan
                rows.append({"precision": precision, "missing": f"skipped: {hazard}"})
            elif precision in NEEDS_EXTENSION and not built:
                rows.append({"precision": precision, "missing": f"quanto_cuda {extension.state}"})
            elif deadline - time.monotonic() < 90:
                rows.append({"precision": precision, "missing": "out of time budget"})
            else:
                tokens_here = tokens % scorer.model.config.vocab_size
                rows.append(uniform(scorer, precision, tokens_here))
                print(str(dtype), json.dumps(rows[-1]), flush=True)
        measured = [r for r in rows if "missing" not in r]
        results["ranking"][str(dtype)] = {s: rank_agreement(measured, s) for s in SHAPES}
    scorers.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _study_trials(results: dict[str, Any], wanted: int, left_s: float) -> int:
    """How many study trials fit in ``left_s``, judged from the uniform plans' costs."""
    rows = [r for r in results["uniform"][str(STUDY_DTYPE)] if "missing" not in r]
    if not rows:
        return 0
    per_trial = max(sum(r["seconds"].values()) for r in rows) + 0.5
    layers = results["layers"]
    sensitivity = 3 * layers * (rows[0]["seconds"]["evaluate"] + 0.05)
    return max(0, min(wanted, int((left_s - 30 - sensitivity) / per_trial)))


def _save(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")


def _table(results: dict[str, Any]) -> str:
    lines = [
        f"gpu_check on {results['device']} (torch {results['torch']}, {results['size']} "
        f"config, {results['parameters']} parameters, {results['layers']} quantizable "
        f"layers); quanto_cuda: {results.get('extension', 'not run')[:80]}",
    ]
    if results["uniform"]:
        lines += [
            "| dtype | plan | P | C | T decode ms | again | model | T prefill ms | model | "
            "kernel/fallback layers |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    for dtype, rows in results["uniform"].items():
        for r in rows:
            if "missing" in r:
                lines.append(f"| {dtype} | {r['precision']} | {r['missing'][:60]} |")
                continue
            lines.append(
                f"| {dtype} | {r['precision']} | {r['P']:.3f} | {r['C']:.2f} | "
                f"{r['T_decode_ms']:.3f} | {r['T_decode_again_ms']:.3f} | "
                f"{r['T_decode_model_ms']:.3f} | {r['T_prefill_ms']:.3f} | "
                f"{r['T_prefill_model_ms']:.3f} | {r['kernel_layers']}/{r['fallback_layers']} "
                f"{','.join(r['kernels'])} |"
            )
    for dtype, ranks in results["ranking"].items():
        for shape, r in ranks.items():
            lines.append(
                f"ranking {dtype} {shape}: {r['same_order']}/{r['pairs']} pairs of "
                f"{','.join(r['plans'])} in the same order as measured "
                f"({r['model_ties']} tied in the model)"
            )
    if "study" in results:
        lines.append(f"study: {json.dumps(results['study'])}")
    if results.get("torchao"):
        lines += torchao_table(results["torchao"])
    return "\n".join(lines)


if __name__ == "__main__":
    main()
