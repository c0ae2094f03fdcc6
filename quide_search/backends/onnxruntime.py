"""The ONNX Runtime backend: plans that run with ORT's int8 and int4 CPU kernels.

Unlike quanto and torchao, which quantize torch layers one by one, this backend builds the
whole model for each plan (:class:`~quide_search.backends._base.WholeModelBackend`): the float
model is exported to ONNX once per scorer (a study's process; checking the protocol exports
it once more, to find layers without a node of their own), activation ranges are calibrated
once on the
calibration samples, and each plan quantizes exactly its layers of that graph and opens an
ORT session, which computes P and is timed for T. Precisions (``--backend onnxruntime``, CPU):

- ``w8a8``: static QDQ int8 for Conv, Linear (Gemm) and MatMul: **uint8 activations**, int8
  per-channel symmetric weights, ranges calibrated on the calibration split (MinMax). ORT's
  optimiser fuses such a layer into ``QLinearConv`` / ``QGemm`` / ``QLinearMatMul``; with
  int8 activations (its default) it leaves convolutions unfused, and no faster.
- ``int8``, ``int4``: weight-only, block-wise (block 128 along the input features),
  symmetric, ``MatMulNBits`` with ``accuracy_level`` 4 (int8 products of the quantized
  activations), for Linear layers only. Asymmetric int4 is wrong at batch 1 on AVX2-only
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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from quide_search.backends import _onnx_graph as graphs
from quide_search.backends._kinds import BuiltModel, WholeModelBackend
from quide_search.backends.cpu import cpu_flags, has_vnni
from quide_search.errors import DataError, PlanError, TrialEvaluationError, first_line
from quide_search.plan import FLOAT, PRECISIONS, BitPlan

if TYPE_CHECKING:
    import torch

    from quide_search.backends._ort_build import ExportedModel

__all__ = ["MODEL_FILE", "OnnxRuntimeBackend", "OrtModel", "OrtSettings"]

MODEL_FILE = "model.onnx"
_OFFERED = ("w8a8", "int8", "int4")


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


class OrtModel(nn.Module):
    """A quantized ONNX model run by an ORT session, called like the torch model it came from.

    Args:
        session: The ``onnxruntime.InferenceSession``.
        data: The model's serialised bytes (what :meth:`OnnxRuntimeBackend.save` writes).
        threads: The session's intra-op threads (None: ORT's default).
        exported: The float graph it was built from, which tells which node is which layer
            (None for a model loaded from a file).
    """

    def __init__(
        self, session: Any, data: bytes, threads: int | None, exported: ExportedModel | None
    ) -> None:
        super().__init__()
        self.session = session
        self.data = data
        self.threads = threads
        self.exported = exported

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) float inputs -> the model's (N, ...) float outputs, on the CPU."""
        import torch

        array = x.detach().to("cpu", torch.float32).numpy()
        return torch.from_numpy(self.session.run(None, {graphs.INPUT: array})[0])


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
        # (id of the float model, sample shape) -> (the model, its export): the model is held
        # so that its id is not reused by another while the export is kept.
        self._exported: dict[tuple[int, tuple[int, ...]], tuple[nn.Module, ExportedModel]] = {}

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
        self, device: torch.device, activations: Sequence[str] = ("none",)
    ) -> tuple[str, ...]:
        """With weight-only ``activations`` (``none``): w8a8, int8, int4 and float
        (convolutions run only w8a8, so float must be a choice for a search to have any over
        them). With int8 activations asked: int8 and float, which ``--activations`` pairs into
        w8a8 (and int8 where ``none`` is asked too): ORT has no W4A8.

        Raises:
            ConfigError: Off a CPU (nothing is offered there), or for float8 activations.
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
        return (*_OFFERED, FLOAT) if tuple(activations) == ("none",) else ("int8", FLOAT)

    def settings_record(self) -> dict[str, Any]:
        return self.settings.to_dict()

    def layer_types(self) -> tuple[type[nn.Module], ...]:
        return (nn.Conv1d, nn.Conv2d, nn.Linear)

    def layer_kinds(self) -> str:
        return "Conv1d and Conv2d (w8a8 only), Linear"

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
        """Convolutions cannot run weight-only int8/int4 (MatMulNBits is a matrix product);
        given an ``example`` input, the model is exported, and a layer with no node of its own
        in the graph (called twice, or not through its module) can run no precision."""
        modules = dict(model.named_modules())
        weight_only = [q for q in precisions if q in ("int8", "int4")]
        unfit = {
            name: {q: "ORT's weight-only MatMulNBits runs Linear layers only" for q in weight_only}
            for name in layers
            if weight_only and isinstance(modules[name], (nn.Conv1d, nn.Conv2d))
        }
        if example is not None and not _transformers_model(model):
            exported = self._export(model, list(layers), example)
            for name, why in exported.unmapped.items():
                unfit[name] = {q: f"ORT cannot tell its node: {why}" for q in precisions
                               if q != FLOAT}  # fmt: skip
        return unfit

    def hazard(
        self,
        model: nn.Module,
        device: torch.device,
        precisions: Sequence[str],
        layers: Sequence[str] | None = None,
    ) -> str | None:
        """A transformers model (a causal LM) does not run through this backend yet."""
        if _transformers_model(model):
            return (
                "the onnxruntime backend does not run transformers models yet (their ONNX "
                "export and decode step are not built). Use --backend quanto or torchao."
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
        exported = self._export(model, list(layers), calibration)
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
        module = OrtModel(built.session, built.data, threads, exported)
        return BuiltModel(module, built.stored_bytes, per_layer, kernels)

    def layer_profile(
        self, built: BuiltModel, example: torch.Tensor, runs: int
    ) -> dict[str, float]:
        """Each layer's kernel time from ORT's profiler: the time of every node of ORT's
        optimised graph that computes the layer (:func:`~._onnx_graph.node_layers`: its fused
        kernel, its output's DequantizeLinear), per run; the first run (warm-up) is dropped."""
        import tempfile

        from quide_search.backends._ort_build import open_session

        module = built.module
        if not isinstance(module, OrtModel) or module.exported is None:
            raise TrialEvaluationError("only a model built in this process can be profiled")
        exported = module.exported
        inputs = {graphs.INPUT: example.detach().cpu().float().numpy()}
        try:
            with tempfile.TemporaryDirectory(prefix="quide-ort-profile-") as name:
                folder = Path(name)
                session = open_session(module.data, module.threads, profile=folder / "p",
                                       optimized=folder / "optimized.onnx")  # fmt: skip
                for _ in range(runs + 1):
                    session.run(None, inputs)
                events = json.loads(Path(session.end_profiling()).read_text())
                _, node_layer = exported.optimized_layers(folder / "optimized.onnx")
        except Exception as e:  # ORT raises its own types
            raise TrialEvaluationError(
                f"profiling in onnxruntime failed: {first_line(e, graphs.ORT_MESSAGE)}"
            ) from e
        per_layer = graphs.profile_ms(_after_first_run(events), node_layer, runs)
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
        from quide_search.backends._ort_build import open_session

        path = folder / MODEL_FILE
        if not path.is_file():
            raise DataError(f"{folder} must hold {MODEL_FILE}, but it does not. Export again.")
        data = path.read_bytes()
        return OrtModel(open_session(data, None), data, None, None)

    def loading_recipe(self, model: nn.Module) -> str | None:
        return (
            "import numpy as np\nimport onnxruntime as ort\n"
            f"session = ort.InferenceSession(folder + '/{MODEL_FILE}', "
            "providers=['CPUExecutionProvider'])\n"
            "run = lambda x: session.run(None, "
            f"{{'{graphs.INPUT}': np.asarray(x, np.float32)}})[0]"
        )

    def _export(self, model: nn.Module, layers: list[str], example: torch.Tensor) -> ExportedModel:
        """The study's exported graph of ``model`` (made once per model and sample shape)."""
        from quide_search.backends._ort_build import ExportedModel

        key = (id(model), tuple(example.shape[1:]))
        if key not in self._exported:
            self._exported[key] = (model, ExportedModel(model, layers, example, self.settings))
        return self._exported[key][1]


def _transformers_model(model: nn.Module) -> bool:
    """Whether ``model`` is a transformers model (without importing transformers)."""
    return any(cls.__module__.startswith("transformers.") for cls in type(model).__mro__)


def _after_first_run(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The node events of every run but the first (``model_run`` marks each run's start)."""
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    cutoff = starts[1] if len(starts) > 1 else float("inf")
    return [e for e in events if e.get("ts", 0) >= cutoff]
