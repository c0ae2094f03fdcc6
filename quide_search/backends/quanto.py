"""The optimum-quanto backend: int8/int4/int2/float8 weights, float, int8 or float8 activations,
for Linear and Conv2d layers.

Activation quantization is static: each layer's input scale is fitted with quanto's
``Calibration`` on what the layer receives in the float model on the calibration samples
(``backends.calibration``). The layer's output stays in float (quanto's output quantization is
turned off), so the next layer quantizes its input with its own scale.

transformers' ``Conv1D`` (GPT-2's attention and MLP projections) computes ``x @ W + b`` with
``W`` of shape (in, out): a Linear with the transposed weight. quanto has no quantized
version of it, so it is quantized as that Linear (quanto's ``QLinear``), exactly.

This is the only module that imports ``optimum.quanto``. Plans' backend-neutral names map to
quanto's qtypes here; a checkpoint is quanto's own layout (the state dict as safetensors and
``quantization_map()``), which ``optimum.quanto.requantize`` reloads without quide-search.
"""

from __future__ import annotations

import copy
import importlib
import json
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quide_search.backends._base import layer_failures
from quide_search.backends._hf import conv1d_type, is_transformers_model
from quide_search.backends._kinds import LayerBackend
from quide_search.backends._quanto_kernel import prepare_cpu_kernel
from quide_search.errors import DataError, PlanError
from quide_search.plan import PRECISIONS, BitPlan, activation_precision, weight_precision

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch and optimum.quanto are imported where they are used: the plan names and the
# quantization map (what `export` writes) need neither, and importing them takes seconds.

__all__ = ["MAP_FILE", "WEIGHTS_FILE", "QuantoBackend"]

WEIGHTS_FILE = "model.safetensors"
MAP_FILE = "quantization_map.json"
_QTYPE = {
    "int8": "qint8",
    "int4": "qint4",
    "int2": "qint2",
    "fp8": "qfloat8",
}  # weights, activations


class QuantoBackend(LayerBackend):
    """optimum-quanto 0.2: weight-only, or weights and static (calibrated) activations."""

    name = "quanto"

    def version(self) -> str:
        return str(getattr(_quanto(), "__version__", "unknown"))

    def precisions(self, device: torch.device) -> Mapping[str, int]:
        return {
            name: bits
            for name, bits in PRECISIONS.items()
            if weight_precision(name) in _QTYPE and activation_precision(name) in (None, *_QTYPE)
        }

    def calibrated(self, precision: str) -> bool:
        return activation_precision(precision) is not None

    def layer_kinds(self) -> str:
        return "Linear, Conv2d, transformers' Conv1D (as a Linear)"

    def layer_types(self) -> tuple[type[nn.Module], ...]:
        from torch import nn

        return (nn.Linear, nn.Conv2d, *conv1d_type())

    def quantize_layer(
        self,
        module: nn.Module,
        precision: str,
        inputs: Sequence[tuple[Any, ...]] | None = None,
    ) -> nn.Module:
        import torch

        quantize_module = _quanto().quantize_module
        if weight_precision(precision) in ("int4", "int2"):
            prepare_cpu_kernel(Path(str(_quanto().__file__)).parent)
        self.check_inputs(precision, inputs)
        activations = activation_precision(precision)
        # no_grad, not inference_mode: quanto's int4/int2 packing sets version counters, which
        # inference tensors refuse.
        with layer_failures("quanto", module, precision), torch.no_grad():
            linear = linear_from_conv1d(module)
            copied = linear if linear is not None else copy.deepcopy(module)
            quantized = quantize_module(
                copied,
                weights=_QTYPE[weight_precision(precision)],
                activations=_QTYPE[activations] if activations else None,
            )
            if quantized is None:
                raise TypeError(f"{type(module).__name__} is not a layer quanto quantizes")
            if activations:
                _calibrate(quantized, inputs or ())
            quantized.freeze()
            if linear is not None:
                quantized.from_conv1d = True  # its checkpoint needs our loader
        return quantized

    def kernel_path(self, quantized: nn.Module) -> str:
        """``kernel:NAME`` where quanto 0.2.7 dispatches the weights to a low-bit kernel.

        ``kernel:int_mm`` for a Linear with int8 weights and int8 activations on a CPU
        (``torch._int_mm``; on CUDA quanto takes it only for more than 16 rows, so it is
        counted as the float path there); its optimized tensor types (TinyGemm, AWQ, Marlin);
        torch's int8 weight-pack matmul for int8 weights with bfloat16 activations on a CPU.
        ``fallback`` where it dequantizes the weight and runs the float operation (every
        Conv2d, plain int2/int4 packing, int8 or float8 weights with float32 activations,
        float8 activations). Tests check these rules against the ops the profiler sees.
        """
        weight = getattr(quantized, "weight", None)
        kind = type(weight).__name__
        if _int_mm(quantized, weight):
            return "kernel:int_mm"
        if kind.startswith(("TinyGemm", "AWQ", "Marlin")):
            short = kind.removesuffix("WeightQBitsTensor").removesuffix("QBytesTensor")
            return "kernel:" + short.lower()
        if _int8pack(quantized, weight):
            return "kernel:int8pack"
        return "fallback"

    def float_twin(self, quantized: nn.Module) -> nn.Module | None:
        from quide_search.backends._quanto_twin import dequantized_twin

        if self.kernel_path(quantized) != "fallback" or _activation_qtype(quantized):
            return None
        return dequantized_twin(quantized)

    def hazard(
        self,
        model: nn.Module,
        device: torch.device,
        precisions: Sequence[str],
        layers: Sequence[str] | None = None,
    ) -> str | None:
        """quanto 0.2.7's int4 AWQ kernels crash on float16 models on CUDA.

        Their GEMV path (fewer than 8 rows: batch-1 decoding) raised "CUDA error: an illegal
        memory access" on an H200 (benchmarks/RESULTS.md, GPU check); that error poisons the
        process's CUDA context, so it cannot be a failed trial. bfloat16 takes quanto's
        tinygemm kernel instead, which ran.
        """
        import torch

        if device.type != "cuda" or all(weight_precision(p) != "int4" for p in precisions):
            return None
        if not any(p.dtype == torch.float16 for p in model.parameters()):
            return None
        return (
            "int4 weights (--bits 4, also with --activations) on a float16 model on CUDA run "
            "optimum-quanto 0.2.7's AWQ int4 kernels, "
            "whose batch-1 path crashed the process with 'CUDA error: an illegal memory "
            "access'. Load the model in bfloat16 (--dtype bfloat16), run on the CPU, or leave "
            "4 out of --bits."
        )

    def quantization_map(self, plan: BitPlan) -> dict[str, Any]:
        """The plan as ``optimum.quanto.requantize`` takes its quantization map."""
        mapping = {}
        for name, precision in plan.quantized_layers().items():
            activations = activation_precision(precision)
            mapping[name] = {
                "weights": _QTYPE[weight_precision(precision)],
                "activations": _QTYPE[activations] if activations else "none",
            }
        return mapping

    def save(self, model: nn.Module, folder: Path) -> list[str]:
        """Write quanto's documented layout, or, for a transformers causal LM, the layout of
        ``QuantizedModelForCausalLM.save_pretrained`` (config, weights, ``quanto_qmap.json``)."""
        from safetensors.torch import save_file

        _quanto_map = _quanto().quantization_map
        if is_transformers_model(model):
            from optimum.quanto import QuantizedModelForCausalLM

            QuantizedModelForCausalLM(model).save_pretrained(str(folder))
            return sorted(p.name for p in folder.iterdir())
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        (folder / MAP_FILE).write_text(json.dumps(_quanto_map(model), indent=2), encoding="utf-8")
        return [WEIGHTS_FILE, MAP_FILE]

    def loading_recipe(self, model: nn.Module) -> str | None:
        if not is_transformers_model(model):
            return _RECIPE
        conv1d = conv1d_type()
        if any(getattr(m, "from_conv1d", False) or isinstance(m, conv1d) for m in model.modules()):
            return None  # quanto's loader does not know transformers' Conv1D (GPT-2)
        return _CAUSAL_LM_RECIPE

    def transformers_config(self, plan: BitPlan, model: nn.Module | None) -> Any:
        """Refused: transformers' optimum-quanto integration cannot save quantized weights
        (its quantizer is not serialisable) and refuses quantized activations."""
        raise PlanError(
            "--format transformers needs weights transformers can save, but transformers' "
            "optimum-quanto integration quantizes on load only and cannot serialise them. "
            "Use --checkpoint (quanto's QuantizedModelForCausalLM layout), or search with "
            "--backend torchao."
        )

    def load(self, skeleton: nn.Module, folder: Path) -> nn.Module:
        import torch
        from safetensors.torch import load_file

        requantize = _quanto().requantize

        map_file = next(
            (n for n in (MAP_FILE, "quanto_qmap.json") if (folder / n).is_file()), None
        )
        missing = [n for n in (WEIGHTS_FILE,) if not (folder / n).is_file()]
        if map_file is None:
            missing.append(f"{MAP_FILE} (or quanto_qmap.json)")
        if missing:
            raise DataError(
                f"a quantized checkpoint folder must hold {WEIGHTS_FILE} and {MAP_FILE}, but "
                f"{str(folder)!r} lacks {', '.join(missing)}. Export one with "
                "`quide-search export --checkpoint`."
            )
        qmap = json.loads((folder / str(map_file)).read_text(encoding="utf-8"))
        self.check_checkpoint_layers(list(qmap), skeleton)
        state = load_file(str(folder / WEIGHTS_FILE))
        with torch.no_grad():
            for name in qmap:
                linear = linear_from_conv1d(skeleton.get_submodule(name))
                if linear is not None:
                    skeleton.set_submodule(name, linear)
            requantize(skeleton, state, qmap, device=torch.device("cpu"))
        for name in qmap:
            float_outputs(skeleton.get_submodule(name))
        return skeleton


_OUTPUTS_IN_FLOAT = """\
for fqn, q in qmap.items():  # calibrated activations: outputs stay in float
    if q["activations"] != "none":
        model.get_submodule(fqn).disable_output_quantization()
"""
_RECIPE = f"""\
import json, optimum.quanto, safetensors.torch
qmap = json.load(open(f"{{folder}}/{MAP_FILE}"))
state = safetensors.torch.load_file(f"{{folder}}/{WEIGHTS_FILE}")
optimum.quanto.requantize(model, state, qmap)
{_OUTPUTS_IN_FLOAT}"""
_CAUSAL_LM_RECIPE = f"""\
import json, optimum.quanto
model = optimum.quanto.QuantizedModelForCausalLM.from_pretrained(folder)._wrapped
qmap = json.load(open(f"{{folder}}/quanto_qmap.json"))
{_OUTPUTS_IN_FLOAT}"""


def linear_from_conv1d(module: nn.Module) -> nn.Linear | None:
    """The ``nn.Linear`` with the same outputs as a transformers ``Conv1D``, else None.

    ``Conv1D(nf, nx)`` holds ``weight`` of shape (nx, nf) = (in, out) and returns
    ``x @ weight + bias``; the Linear holds its transpose (out, in) and the same bias.
    """
    types = conv1d_type()
    if not types or not isinstance(module, types):
        return None
    import torch
    from torch import nn

    weight: torch.Tensor = module.weight  # type: ignore[assignment]
    bias: torch.Tensor | None = getattr(module, "bias", None)
    linear = nn.Linear(int(weight.shape[0]), int(weight.shape[1]), bias=bias is not None,
                       device=weight.device, dtype=weight.dtype)  # fmt: skip
    with torch.no_grad():
        linear.weight.copy_(weight.t())
        if bias is not None:
            linear.bias.copy_(bias)
    return linear.requires_grad_(bool(weight.requires_grad)).train(module.training)


def _calibrate(quantized: nn.Module, inputs: Sequence[tuple[Any, ...]]) -> None:
    """Fit ``quantized``'s static input scale with quanto's ``Calibration`` on ``inputs``.

    quanto's absmax per batch, averaged with momentum 0.9 in batch order: the same inputs
    give the same scale. The layer's output is left in float (see the module docstring).
    """
    with _quanto().Calibration(streamline=False):
        for args in inputs:
            quantized(*args)
    float_outputs(quantized)


def float_outputs(module: nn.Module) -> None:
    """Turn off quanto's output quantization of an activation-quantized layer.

    quanto quantizes a layer's output so that a following quantized layer can take it as it
    is; here every layer quantizes its own input with its own calibrated scale, and the output
    of the integer matmul is rescaled to float in any case. A loader of a quide-search
    checkpoint calls this on each such layer after ``optimum.quanto.requantize``.
    """
    if _activation_qtype(module):
        module.disable_output_quantization()  # type: ignore[operator]


def _activation_qtype(module: nn.Module) -> str | None:
    qtype = getattr(module, "activation_qtype", None)
    return None if qtype is None else str(qtype.name)


def _int_mm(module: nn.Module, weight: Any) -> bool:
    """int8 weights and int8 activations of a Linear on a CPU: quanto runs ``torch._int_mm``.

    On CUDA quanto takes that kernel only for more than 16 rows (not a batch-1 decode), so
    there it is counted as the float path.
    """
    from torch import nn

    return (
        isinstance(module, nn.Linear)
        and _activation_qtype(module) == "qint8"
        and getattr(getattr(weight, "qtype", None), "name", None) == "qint8"
        and weight.device.type == "cpu"
    )


def _quanto() -> types.ModuleType:
    """``optimum.quanto``, imported without its transformers and diffusers model wrappers.

    optimum-quanto 0.2.7's ``__init__`` star-imports ``optimum.quanto.models``, which imports
    all of transformers where it is installed: 4-6 s on a 2-core CPU, more than torch itself,
    in every process, for classes only a causal LM's checkpoint uses. So the package is
    imported with an empty stand-in for that subpackage, which is then dropped:
    ``optimum.quanto.models`` imports in full where it is named, and its ``Quantized*``
    wrappers on first access through the package (``from optimum.quanto import
    QuantizedModelForCausalLM`` works as before). Where ``optimum.quanto`` is already
    imported, it is returned as it is.
    """
    if "optimum.quanto" not in sys.modules:
        name = "optimum.quanto.models"
        stand_in = types.ModuleType(name)
        stand_in.__all__ = []  # type: ignore[attr-defined]
        sys.modules[name] = stand_in
        try:
            importlib.import_module("optimum.quanto").__getattr__ = _wrapper  # type: ignore[method-assign]
        finally:
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]
    return importlib.import_module("optimum.quanto")


def _wrapper(name: str) -> Any:
    """``optimum.quanto``'s module ``__getattr__``: a model wrapper, imported when named."""
    if not name.startswith("Quantized"):
        raise AttributeError(f"module 'optimum.quanto' has no attribute {name!r}")
    return getattr(importlib.import_module("optimum.quanto.models"), name)


def _int8pack(module: nn.Module, weight: Any) -> bool:
    import torch
    from torch import nn

    scale = getattr(weight, "_scale", None)
    return (
        isinstance(module, nn.Linear)
        and type(weight).__name__ == "WeightQBytesTensor"
        and getattr(weight, "qtype", None) is not None
        and weight.qtype.name == "qint8"
        and weight.device.type == "cpu"
        and scale is not None
        and scale.dtype == torch.bfloat16
        and module.in_features % 4 == 0
    )
