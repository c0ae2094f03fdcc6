"""The ONNX Runtime backend: plans that run with ORT's int8 and int4 CPU kernels.

Unlike quanto and torchao, which quantize torch layers one by one, this backend builds the
whole model for each plan (:class:`~quide_search.backends._base.WholeModelBackend`): the float
model is exported to ONNX once per model (a study's process), activation ranges are calibrated
once on the calibration samples, and each plan quantizes exactly its layers of that graph and
opens an ORT session, which computes P and is timed for T (a causal LM's graph carries its KV
cache: :mod:`~quide_search.backends._ort_session`). Precisions (``--backend onnxruntime``, CPU):

- ``w8a8``: static QDQ int8 for Conv, Linear (Gemm) and MatMul: **uint8 activations**, int8
  per-channel symmetric weights, ranges calibrated on the calibration split (MinMax). ORT's
  optimiser fuses such a layer into ``QLinearConv`` / ``QGemm`` / ``QLinearMatMul``; with
  int8 activations (its default) it leaves convolutions unfused, and no faster.
- ``int8``, ``int4``: weight-only, block-wise (block 128 along the input features),
  symmetric, ``MatMulNBits`` with ``accuracy_level`` 4 (int8 products of the quantized
  activations), for Linear layers (and transformers' Conv1D) only; a causal LM's layers run
  these only. Asymmetric int4 is wrong at batch 1 on AVX2-only
  CPUs (ORT issue #29853); 8-bit MatMulNBits at accuracy level 0 runs slower than float.

``reduce_range`` (7-bit weights) is chosen where the CPU lacks VNNI, whose absence lets u8s8
products saturate. The choices depend on the CPU's flags, read at run time
(:class:`OrtSettings`), and are recorded in the protocol. int2, fp8 and int4 or int8
weight-only convolutions are refused with the reason. Which operator runs each planned layer
is read from ORT's optimised graph: a layer ORT leaves in float fails the trial.
This is the only module (with its helpers) that imports onnxruntime.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from quide_search.backends import _onnx_graph as graphs
from quide_search.backends import _ort_session as decoding
from quide_search.backends._hf import conv1d_type, is_causal_lm
from quide_search.backends._kinds import BuiltModel, WholeModelBackend
from quide_search.backends._ort_build import WEIGHT_ONLY_BITS, ExportedModel, open_session
from quide_search.backends._ort_session import OrtModel
from quide_search.backends.cpu import cpu_flags, has_vnni
from quide_search.errors import DataError, PlanError, TrialEvaluationError, first_line
from quide_search.plan import FLOAT, PRECISIONS, BitPlan

if TYPE_CHECKING:
    import torch

__all__ = ["MODEL_FILE", "OnnxRuntimeBackend", "OrtModel", "OrtSettings"]

MODEL_FILE = "model.onnx"
_OFFERED = ("w8a8", "int8", "int4")
_WEIGHT_ONLY = tuple(WEIGHT_ONLY_BITS)  # int8, int4


@dataclass(frozen=True)
class OrtSettings:
    """The kernel-critical settings, chosen from the CPU's flags (recorded in the protocol).

    Attributes:
        cpu_flags: The flags they were chosen from (:func:`~quide_search.backends.cpu.cpu_flags`).
        reduce_range: 7-bit int8 weights: where the CPU has no VNNI.
        activations: Static activation type: ``uint8`` (u8s8 kernels; int8 leaves convs unfused).
        accuracy_level: MatMulNBits' compute type: 4 (int8 products of quantized activations).
        int4_symmetric: Symmetric weight-only blocks (asymmetric int4 is wrong at batch 1 on
            AVX2-only CPUs, ORT #29853).
        block_size: The largest weight-only block along the input features; a layer with
            fewer inputs takes the largest power of two (from 16) not above them.
    """

    cpu_flags: tuple[str, ...]
    reduce_range: bool
    activations: str = "uint8"
    accuracy_level: int = 4
    int4_symmetric: bool = True
    block_size: int = 128

    @classmethod
    def for_flags(cls, flags: Sequence[str]) -> OrtSettings:
        """The settings for a CPU with ``flags``."""
        flags = tuple(flags)
        return cls(cpu_flags=flags, reduce_range=not has_vnni(flags))

    def to_dict(self) -> dict[str, Any]:
        """``chosen``: what decides the kernels (must match when a study resumes);
        ``cpu_flags``: what they were chosen from (a record: another CPU that chooses the
        same may join)."""
        chosen = {k: v for k, v in asdict(self).items() if k != "cpu_flags"}
        return {"chosen": chosen, "cpu_flags": list(self.cpu_flags)}


class OnnxRuntimeBackend(WholeModelBackend):
    """ONNX Runtime (CPU): static W8A8 for Conv/Linear, weight-only int8/int4 for Linear.

    Args:
        flags: The CPU's flags (tests inject another CPU's); read from the machine if None.
    """

    name = "onnxruntime"
    saves_onnx = True
    recipe_needs = (
        "recipe: Python that imports only numpy and onnxruntime; it expects `folder`, this "
        f"folder's path, and defines `session`, an ORT session on {MODEL_FILE}, and `run(x)`, "
        "which maps model inputs (an array, samples first) to the model's outputs as float32."
    )

    def __init__(self, flags: Sequence[str] | None = None) -> None:
        self.settings = OrtSettings.for_flags(cpu_flags() if flags is None else flags)

    def version(self) -> str:
        import onnxruntime

        return str(onnxruntime.__version__)

    def precisions(self, device: torch.device) -> Mapping[str, int]:
        """w8a8, int8 and int4 on a CPU; nothing elsewhere (the CPU wheel)."""
        return {q: PRECISIONS[q] for q in _OFFERED} if device.type == "cpu" else {}

    def refusals(self, device: torch.device) -> Mapping[str, str]:
        if device.type != "cpu":
            return {q: "is not offered off a CPU: the onnxruntime backend runs ORT's CPU "
                       "execution provider" for q in _OFFERED}  # fmt: skip
        return {
            "int2": "is not offered: ORT has no int2 kernel on a CPU",
            "fp8": "is not offered: ORT's CPU execution provider has no float8 kernels",
            "w4a8": "is not offered: ORT's static quantization takes int8 weights (int4 runs "
            "weight-only: int4)",
        }

    def default_bits(
        self,
        device: torch.device,
        activations: Sequence[str] = ("none",),
        *,
        causal_lm: bool = False,
    ) -> tuple[str, ...]:
        """With weight-only ``activations`` (``none``): w8a8, int8, int4 and float
        (convolutions run only w8a8, so float must be a choice for a search to have any over
        them); for a ``causal_lm``, int8 and int4 (its layers run weight-only). With int8
        activations asked: int8 and float, which ``--activations`` pairs into w8a8 (and int8
        where ``none`` is asked too): ORT has no W4A8.

        Raises:
            ConfigError: Off a CPU (nothing is offered there), for float8 activations, or for
                int8 activations of a causal LM.
        """
        _check_default_inputs(device, activations, causal_lm)
        if causal_lm:
            return _WEIGHT_ONLY
        return (*_OFFERED, FLOAT) if tuple(activations) == ("none",) else ("int8", FLOAT)

    def settings_record(self) -> dict[str, Any]:
        return self.settings.to_dict()

    def layer_types(self) -> tuple[type[nn.Module], ...]:
        return (nn.Conv1d, nn.Conv2d, nn.Linear, *conv1d_type())

    def layer_kinds(self) -> str:
        return (
            "Conv1d and Conv2d (w8a8 only), Linear, transformers' Conv1D; a causal LM's "
            "layers run weight-only"
        )

    def calibrated(self, precision: str) -> bool:
        """w8a8 fits static activation ranges on the calibration samples."""
        return precision == "w8a8"

    def calibration_needed(self, precisions: Sequence[str]) -> bool:
        """Always: the graph is exported on the calibration samples' shape."""
        return True

    def unfit_layers(
        self,
        model: nn.Module,
        device: torch.device,
        precisions: Sequence[str],
        layers: Sequence[str],
        *,
        example: torch.Tensor | None = None,
    ) -> dict[str, dict[str, str]]:
        """Convolutions cannot run weight-only int8/int4 (MatMulNBits is a matrix product), and
        a causal LM's layers run nothing but weight-only (static activation ranges over its
        KV-cache graph are not built). Given an ``example`` input, the model is exported, and
        a layer with no node of its own in the graph (called twice, or not through its
        module) can run no precision."""
        modules = dict(model.named_modules())
        weight_only = [q for q in precisions if q in _WEIGHT_ONLY]
        causal_lm = is_causal_lm(model)
        unfit: dict[str, dict[str, str]] = {}
        for name in layers:
            if causal_lm:
                unfit[name] = {q: "a causal LM runs ORT's weight-only int8 and int4 only"
                               for q in precisions if q not in (*weight_only, FLOAT)}  # fmt: skip
            elif weight_only and isinstance(modules[name], (nn.Conv1d, nn.Conv2d)):
                unfit[name] = {q: "ORT's weight-only MatMulNBits runs Linear layers only"
                               for q in weight_only}  # fmt: skip
        unmapped = self._export(model, example).unmapped if example is not None else {}
        for name in set(layers) & set(unmapped):
            unfit[name] = {q: f"ORT cannot tell its node: {unmapped[name]}" for q in precisions
                           if q != FLOAT}  # fmt: skip
        return {name: refused for name, refused in unfit.items() if refused}

    def hazard(
        self,
        model: nn.Module,
        device: torch.device,
        precisions: Sequence[str],
        layers: Sequence[str] | None = None,
    ) -> str | None:
        """A causal LM's layers run nothing but weight-only int8 and int4 here."""
        other = [q for q in precisions if q not in (*_WEIGHT_ONLY, FLOAT)]
        if other and is_causal_lm(model):
            return (
                f"the onnxruntime backend runs a causal LM's layers weight-only (int8, int4), "
                f"not {', '.join(other)}. Leave {', '.join(other)} out of --bits, or use "
                "--backend quanto."
            )
        return None

    def build(
        self,
        model: nn.Module,
        plan: BitPlan,
        *,
        calibration: torch.Tensor | None = None,
        threads: int | None = None,
    ) -> BuiltModel:
        layers = self.quantizable_layers(model)
        plan.validate_layers(layers)
        if calibration is None or len(calibration) == 0:
            raise PlanError(
                "the onnxruntime backend exports the model on calibration inputs, but none were "
                "given. Pass the task's calibration samples (apply(..., calibration=...))."
            )
        exported = self._export(model, calibration)
        wanted = plan.quantized_layers()
        built = exported.build(wanted, threads, calibration)
        kernels = {}
        for name in wanted:
            ops = built.ops.get(name, [])
            low_bit = [op for op in ops if op in graphs.LOW_BIT_OPS]
            if not low_bit:
                raise TrialEvaluationError(
                    f"onnxruntime left layer {name} ({wanted[name]}) in float: its optimised "
                    f"graph runs {', '.join(ops) or 'no node of it'}. Keep that layer in float "
                    "(a plan file), or report the model: its graph keeps ORT from fusing it"
                )
            kernels[name] = f"kernel:{low_bit[0]}"
        per_layer = {name: built.layer_bytes.get(name, 0) for name in layers}
        module = OrtModel(built.session, built.data, threads, exported, built.optimized_nodes)
        return BuiltModel(module, built.stored_bytes, per_layer, kernels)

    def layer_profile(
        self, built: BuiltModel, call: Callable[[nn.Module], object], runs: int
    ) -> dict[str, float]:
        """Each layer's kernel time from ORT's profiler: the time of every node of ORT's
        optimised graph that computes the layer (:func:`~._onnx_graph.node_layers`: its fused
        kernel, its output's DequantizeLinear), per ``call`` (each makes the same number of
        session runs: one, or a greedy decode's); the first call (warm-up) is dropped. The
        nodes are named as in the optimised graph the build read (the same model and options
        optimise the same way), so that graph is not written and read again."""
        import tempfile

        module = built.module
        if not isinstance(module, OrtModel) or module.exported is None:
            raise TrialEvaluationError("only a model built in this process can be profiled")
        exported, node_layer = module.exported, module.optimized_nodes or {}
        try:
            with tempfile.TemporaryDirectory(prefix="quide-ort-profile-") as name:
                session = open_session(module.data, module.threads, profile=Path(name) / "p")
                profiled = OrtModel(session, module.data, module.threads, exported)
                for _ in range(runs + 1):
                    call(profiled)
                events = json.loads(Path(session.end_profiling()).read_text())
        except Exception as e:  # ORT raises its own types
            raise TrialEvaluationError(
                f"profiling in onnxruntime failed: {first_line(e, graphs.ORT_MESSAGE)}"
            ) from e
        per_layer = graphs.profile_ms(_after_first_call(events, runs + 1), node_layer, runs)
        return {name: per_layer.get(name, 0.0) for name in exported.layers}

    def quantization_map(self, plan: BitPlan) -> dict[str, Any]:
        """The plan with the settings it is built with (block size, activation type, ...)."""
        return {"layers": dict(plan.quantized_layers()), "settings": self.settings.to_dict()}

    def save(self, model: nn.Module, folder: Path) -> list[str]:
        if not isinstance(model, OrtModel):
            raise PlanError(
                f"the onnxruntime backend saves the models it builds, not a {type(model).__name__}"
            )
        (folder / MODEL_FILE).write_bytes(model.data)
        return [MODEL_FILE]

    def load(self, skeleton: nn.Module, folder: Path) -> nn.Module:
        """The saved model in a session (``skeleton`` only names the layers)."""

        path = folder / MODEL_FILE
        if not path.is_file():
            raise DataError(f"{folder} must hold {MODEL_FILE}, but it does not. Export again.")
        data = path.read_bytes()
        return OrtModel(open_session(data, None), data, None, None)

    def loading_recipe(self, model: nn.Module) -> str | None:
        """numpy and onnxruntime code: ``run(x)`` maps inputs (samples first) to outputs; for
        a causal LM, token ids (N, S) to logits (N, S, V), with an empty KV cache."""
        opened = (
            "import numpy as np\nimport onnxruntime as ort\n"
            f"session = ort.InferenceSession(folder + '/{MODEL_FILE}', "
            "providers=['CPUExecutionProvider'])\n"
        )
        if not getattr(model, "decoder", False):
            return opened + (
                f"run = lambda x: session.run(None, {{'{graphs.INPUT}': "
                "np.asarray(x, np.float32)})[0]"
            )
        ids, mask, past = decoding.IDS, decoding.MASK, decoding.PAST
        return opened + (
            f"cache = next(i.shape for i in session.get_inputs() if i.name == '{past}')\n"
            "def run(x):\n"
            "    ids = np.asarray(x, np.int64)\n"
            "    empty = np.zeros((cache[0], len(ids), cache[2], 0, cache[4]), np.float32)\n"
            f"    feed = {{'{ids}': ids, '{mask}': np.ones_like(ids), '{past}': empty}}\n"
            "    return session.run(None, feed)[0]"
        )

    def _export(self, model: nn.Module, example: torch.Tensor) -> ExportedModel:
        """The exported graph of ``model``, with every quantizable layer mapped: made once per
        model, sample shape (a causal LM's tokens are free in its graph), ``reduce_range``
        (what its calibration cache depends on) and state of the weights (an in-place change
        of a parameter or buffer makes a new one, which replaces the old), and kept while the
        model lives, so that a study's protocol check and its scorer share it."""

        shape = () if is_causal_lm(model) else tuple(example.shape[1:])
        kept = _EXPORTS.setdefault(model, {})
        key, version = (shape, self.settings.reduce_range), _weights_version(model)
        if key not in kept or kept[key][0] != version:
            layers = list(self.quantizable_layers(model))
            kept[key] = (version, ExportedModel(model, layers, example, self.settings))
        return kept[key][1]


def _check_default_inputs(
    device: torch.device, activations: Sequence[str], causal_lm: bool
) -> None:
    """Refuse what :meth:`OnnxRuntimeBackend.default_bits` has no bits for.

    Raises:
        ConfigError: Off a CPU, for float8 activations, or for a causal LM's int8 ones.
    """
    from quide_search.errors import ConfigError

    if device.type != "cpu":
        raise ConfigError(
            f"--device must be cpu for the onnxruntime backend (ORT's CPU execution "
            f"provider), but got {device.type}. Use --device cpu, or another --backend."
        )
    if "fp8" in activations:
        raise ConfigError(
            "--activations must be none or int8 for the onnxruntime backend (ORT's CPU "
            f"provider has no float8 kernels), but got {','.join(activations)}. Leave fp8 "
            "out of --activations."
        )
    if causal_lm and tuple(activations) != ("none",):
        raise ConfigError(
            "--activations must be none for a causal LM on the onnxruntime backend (its "
            f"layers run weight-only int8 and int4), but got {','.join(activations)}. Drop "
            "--activations."
        )


_EXPORTS: weakref.WeakKeyDictionary[
    nn.Module, dict[tuple[Any, ...], tuple[tuple[tuple[int, int], ...], ExportedModel]]
] = weakref.WeakKeyDictionary()
"""Float model -> (sample shape, reduce_range) -> the weights' version it was exported at and
the export (:meth:`OnnxRuntimeBackend._export`), dropped with the model."""


def _weights_version(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """Each parameter's and buffer's identity and in-place version counter: any change of
    the weights (``load_state_dict``, an optimiser step, an in-place quantization) moves it."""
    tensors = (*model.parameters(), *model.buffers())
    return tuple((id(t), t._version) for t in tensors)


def _after_first_call(events: list[dict[str, Any]], calls: int) -> list[dict[str, Any]]:
    """The node events of every one of ``calls`` calls but the first, each of which ran the
    session equally often (``model_run`` marks each run's start)."""
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    per_call = len(starts) // calls
    cutoff = starts[per_call] if calls > 1 and per_call else float("inf")
    return [e for e in events if e.get("ts", 0) >= cutoff]
