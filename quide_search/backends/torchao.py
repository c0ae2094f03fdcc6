"""The torchao backend: int8, int4 and float8 weight-only, W8A8 and float8 W8A8, for Linear layers.

Precisions (``--backend torchao``), with the torchao 0.18 configuration each one applies:

- ``int8``: ``Int8WeightOnlyConfig`` (per-row scales). On a CPU the int8 weight is cast to the
  activation dtype on every call and a float matmul runs: no low-bit kernel (``fallback``).
- ``w8a8``: ``Int8DynamicActivationInt8WeightConfig``: activations quantized to int8 per row
  on every call, int8 weights, ``torch._int_mm`` (``kernel:int_mm``).
- ``int4``: on a CPU, ``PrototypeInt4WeightOnlyConfig``, torchao's opaque CPU layout run by
  ``torch._weight_int4pack_mm_for_cpu`` (``kernel:int4pack_mm_cpu``). The group size is the
  largest of 128, 64 and 32 that divides the layer's ``in_features``; the kernel also needs
  ``out_features`` divisible by 16. A layer that breaks either is refused before a study
  starts (:meth:`TorchaoBackend.hazard`), never skipped. On CUDA (compute capability 8.0 or
  more, bfloat16 models), ``Int4WeightOnlyConfig`` in the ``tile_packed_to_4d`` format, run by
  tinygemm (``kernel:tinygemm``); torchao's default ``plain`` format needs a separate kernel
  package.
- ``fp8``: ``Float8WeightOnlyConfig`` (float8 e4m3 weights, per-row scales; the weight is cast
  back for a float matmul: ``fallback``).
- ``wf8af8``: ``Float8DynamicActivationFloat8WeightConfig`` per row: float8 weights and
  activations, ``torch._scaled_mm`` (``kernel:scaled_mm``), on CUDA compute capability 8.9 or
  more only; refused elsewhere before a study starts, saying so.

The CUDA paths (int4 in tinygemm's format, ``wf8af8``) follow torchao's documented configs and
have not been run by this project's tests, which run on a CPU; ``benchmarks/gpu_check.py
--parts torchao`` measures them on a GPU.

Conv2d and other layers are left in float (torchao 0.18 quantizes ``nn.Linear``); they are
reported as kept in float, as with every backend. Every quantized layer is checked to hold
torchao's tensor afterwards, so a layer torchao passed over is an error, never a layer
counted as quantized. Stored bytes are those of the tensors inside torchao's weight
(:func:`quide_search.backends._base.model_bytes`). A checkpoint is the state dict saved with
``torch.save`` plus ``torchao_plan.json``; ``load`` applies the same configurations to a
float skeleton and loads the state dict into it (``torch.load(weights_only=True)``).
This is the only module that imports torchao.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quide_search.backends._base import QuantBackend, layer_failures
from quide_search.errors import DataError, PlanError, TrialEvaluationError
from quide_search.plan import PRECISIONS, BitPlan, activation_precision, weight_precision

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["PLAN_FILE", "WEIGHTS_FILE", "TorchaoBackend", "int4_group_size"]

WEIGHTS_FILE = "model.pt"
PLAN_FILE = "torchao_plan.json"
_GROUP_SIZES = (128, 64, 32)
_KERNELS = {
    "Int4OpaqueTensor": "kernel:int4pack_mm_cpu",
    "Int4TilePackedTo4dTensor": "kernel:tinygemm",
}
_FLOAT8_SM = (8, 9)
_TINYGEMM_SM = (8, 0)


def int4_group_size(in_features: int) -> int | None:
    """The int4 group size of a layer: the largest of 128, 64, 32 dividing ``in_features``."""
    return next((g for g in _GROUP_SIZES if in_features % g == 0), None)


class TorchaoBackend(QuantBackend):
    """torchao 0.18: int8 and int4 weight-only, and W8A8 (dynamic int8 activations)."""

    name = "torchao"

    def version(self) -> str:
        return str(_torchao().__version__)

    def precisions(self, device: torch.device) -> Mapping[str, int]:
        """int8, int4, w8a8 and fp8 (weight-only) on a CPU or a CUDA GPU (int4 from SM 8.0);
        wf8af8 (float8 weights and dynamic float8 activations) on SM 8.9 or more."""
        offered = ("int8", "int4", "w8a8", "fp8", "wf8af8")
        return {q: PRECISIONS[q] for q in offered if _unavailable(q, device) is None}

    def check_precisions(self, precisions: Sequence[str], device: torch.device) -> None:
        """Refuse a precision this device cannot run, saying what it needs.

        Raises:
            PlanError: Naming the precision, what it needs and what is offered here.
        """
        for precision in precisions:
            why = _unavailable(precision, device)
            if why is not None:
                raise PlanError(
                    f"{precision} on the torchao backend {why}. On this device it offers "
                    f"{', '.join(self.precisions(device))}: choose among them."
                )
        super().check_precisions(precisions, device)

    def layer_types(self) -> tuple[type[nn.Module], ...]:
        from torch import nn

        return (nn.Linear,)

    def quantize_layer(
        self,
        module: nn.Module,
        precision: str,
        inputs: Sequence[tuple[Any, ...]] | None = None,
    ) -> nn.Module:
        import torch

        quantize_ = _torchao().quantization.quantize_
        copied = copy.deepcopy(module)
        with layer_failures("torchao", module, precision), torch.no_grad():
            quantize_(copied, _config(precision, copied))
        if not hasattr(copied.weight, "__tensor_flatten__"):
            raise TrialEvaluationError(
                f"torchao left a {type(module).__name__} in float when asked for {precision} "
                "(it skips layers its kernels cannot take); it is not counted as quantized."
            )
        copied.requires_grad_(False)
        return copied

    def kernel_path(self, quantized: nn.Module) -> str:
        """``kernel:int_mm`` for W8A8, ``kernel:int4pack_mm_cpu`` for int4 on a CPU,
        ``kernel:tinygemm`` for int4 on CUDA, ``kernel:scaled_mm`` for float8 weights and
        activations, and ``fallback`` for int8 and float8 weight-only (the weight is cast to
        the activations' dtype, then a float matmul runs)."""
        weight = getattr(quantized, "weight", None)
        kind = type(weight).__name__
        dynamic = getattr(weight, "act_quant_kwargs", None) is not None
        if kind == "Int8Tensor":
            return "kernel:int_mm" if dynamic else "fallback"
        if kind == "Float8Tensor":
            return "kernel:scaled_mm" if dynamic else "fallback"
        return _KERNELS.get(kind, "fallback")

    def hazard(
        self,
        model: nn.Module,
        device: torch.device,
        precisions: Sequence[str],
        layers: Sequence[str] | None = None,
    ) -> str | None:
        """int4 on a CPU needs every searched Linear's ``in_features`` divisible by 32 and
        ``out_features`` by 16 (the CPU int4 packing's shapes); layers left out of the search
        (a causal LM's ``lm_head``) are not checked. int4 on CUDA (tinygemm) takes bfloat16
        weights only."""
        if "int4" not in precisions:
            return None
        import torch
        from torch import nn

        if device.type == "cuda":
            if all(p.dtype == torch.bfloat16 for p in model.parameters()):
                return None
            return (
                "--bits 4 with --backend torchao on CUDA runs tinygemm, which takes bfloat16 "
                "weights only, but the model is not bfloat16. Load it with --dtype bfloat16, "
                "or leave 4 out of --bits."
            )

        searched = set(self.quantizable_layers(model) if layers is None else layers)
        refused = [
            f"{name} ({module.in_features} -> {module.out_features})"
            for name, module in model.named_modules()
            if name in searched
            and isinstance(module, nn.Linear)
            and (int4_group_size(module.in_features) is None or module.out_features % 16)
        ]
        if not refused:
            return None
        return (
            "--bits 4 with --backend torchao needs each Linear's in_features divisible by 32 "
            f"and out_features by 16 (torchao's CPU int4 layout), but {', '.join(refused[:5])} "
            f"{'does' if len(refused) == 1 else 'do'} not. Leave 4 out of --bits, or use "
            "--backend quanto."
        )

    def quantization_map(self, plan: BitPlan) -> dict[str, Any]:
        """Each layer's torchao configuration and activation precision."""
        return {
            name: {
                "weights": weight_precision(precision),
                "activations": activation_precision(precision) or "none",
                "config": _CONFIG_NAMES[precision],
            }  # fmt: skip
            for name, precision in plan.quantized_layers().items()
        }

    def save(self, model: nn.Module, folder: Path) -> list[str]:
        """Write the state dict (``torch.save``) and the plan with each layer's settings."""
        import torch

        torch.save(model.state_dict(), folder / WEIGHTS_FILE)
        plan = {name: _layer_record(m) for name, m in model.named_modules() if _quantized(m)}
        (folder / PLAN_FILE).write_text(json.dumps(plan, indent=2), encoding="utf-8")
        return [WEIGHTS_FILE, PLAN_FILE]

    def loading_recipe(self, model: nn.Module) -> str | None:
        return f"""\
import json, torch, torchao.quantization as tq
from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig as Cpu4
for name, layer in json.load(open(f"{{folder}}/{PLAN_FILE}")).items():
    kwargs = {{k: tq.PerRow() if v == "per_row" else v for k, v in layer["kwargs"].items()}}
    config = Cpu4 if layer["config"] == Cpu4.__name__ else getattr(tq, layer["config"])
    tq.quantize_(model.get_submodule(name), config(**kwargs))
model.load_state_dict(torch.load(f"{{folder}}/{WEIGHTS_FILE}", weights_only=True), assign=True)
"""

    def transformers_config(self, plan: BitPlan, model: nn.Module | None) -> Any:
        """``TorchAoConfig`` over an ``FqnToConfig`` of each quantized layer's config.

        Raises:
            PlanError: For int4: torchao 0.18's CPU int4 tensor has no safetensors form,
                and transformers saves only safetensors.
        """
        layers = plan.quantized_layers()
        if "int4" in layers.values():
            raise PlanError(
                "--format transformers writes safetensors, but torchao 0.18's CPU int4 layout "
                "(Int4OpaqueTensor) has none, and this plan has int4 layers. Export it with "
                "--checkpoint (torch.save), or choose a plan without int4."
            )
        if model is None:
            return None
        from transformers import TorchAoConfig

        fqn = _torchao().quantization.FqnToConfig
        configs = {name: _config(q, model.get_submodule(name)) for name, q in layers.items()}
        return TorchAoConfig(quant_type=fqn(configs))

    def load(self, skeleton: nn.Module, folder: Path) -> nn.Module:
        import torch

        missing = [n for n in (WEIGHTS_FILE, PLAN_FILE) if not (folder / n).is_file()]
        if missing:
            raise DataError(
                f"a torchao checkpoint folder must hold {WEIGHTS_FILE} and {PLAN_FILE}, but "
                f"{str(folder)!r} lacks {', '.join(missing)}. Export one with "
                "`quide-search export --checkpoint`."
            )
        plan = json.loads((folder / PLAN_FILE).read_text(encoding="utf-8"))
        self.check_checkpoint_layers(list(plan), skeleton)
        for name, record in plan.items():
            skeleton.set_submodule(
                name, self.quantize_layer(skeleton.get_submodule(name), record["precision"])
            )
        state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        skeleton.load_state_dict(state, assign=True)
        return skeleton


_CONFIG_NAMES = {
    "int8": "Int8WeightOnlyConfig",
    "w8a8": "Int8DynamicActivationInt8WeightConfig",
    "int4": "PrototypeInt4WeightOnlyConfig",
    "fp8": "Float8WeightOnlyConfig",
    "wf8af8": "Float8DynamicActivationFloat8WeightConfig",
}
_CUDA_INT4 = {"config": "Int4WeightOnlyConfig", "int4_packing_format": "tile_packed_to_4d"}


def _torchao() -> Any:
    """torchao, imported once; its import-time deprecation chatter from torch is muted."""
    quiet = logging.getLogger("torch.utils._pytree")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        import torchao
        import torchao.quantization
    finally:
        quiet.setLevel(level)
    return torchao


def _capability(device: torch.device) -> tuple[int, int] | None:
    """A CUDA device's compute capability; None for any other device."""
    if device.type != "cuda":
        return None
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return int(major), int(minor)


def _unavailable(precision: str, device: torch.device) -> str | None:
    """Why torchao cannot run ``precision`` on ``device``, or None."""
    sm = _capability(device)
    where = "a CPU" if sm is None else f"a GPU of compute capability {sm[0]}.{sm[1]}"
    if precision == "wf8af8" and (sm is None or sm < _FLOAT8_SM):
        return f"needs a CUDA GPU of compute capability 8.9 or more (float8 matmul), not {where}"
    if precision == "int4" and sm is not None and sm < _TINYGEMM_SM:
        return f"needs compute capability 8.0 or more on CUDA (tinygemm), not {where}"
    return None


def _config(precision: str, module: nn.Module) -> Any:
    """The torchao configuration of ``precision`` for one Linear, on its weight's device."""
    record = _settings(precision, module)
    kwargs = {k: _value(v) for k, v in record["kwargs"].items()}
    if record["config"] == "PrototypeInt4WeightOnlyConfig":
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

        return PrototypeInt4WeightOnlyConfig(**kwargs)
    return getattr(_torchao().quantization, record["config"])(**kwargs)


def _settings(precision: str, module: nn.Module) -> dict[str, Any]:
    """``precision``'s torchao config name and its arguments (JSON: the checkpoint's record)."""
    if precision not in _CONFIG_NAMES:
        raise ValueError(f"the torchao backend has no {precision!r}")
    if precision == "wf8af8":
        return {"config": _CONFIG_NAMES[precision], "kwargs": {"granularity": "per_row"}}
    if precision != "int4":
        return {"config": _CONFIG_NAMES[precision], "kwargs": {}}
    group = int4_group_size(int(module.in_features))  # type: ignore[arg-type]
    if module.weight.device.type == "cuda":  # tinygemm pads in_features to 1024s itself
        return {"config": _CUDA_INT4["config"], "kwargs": {
            "group_size": group or 128, "int4_packing_format": _CUDA_INT4["int4_packing_format"],
        }}  # fmt: skip
    if group is None:
        raise ValueError(f"in_features {module.in_features} is not divisible by 32")
    return {"config": _CONFIG_NAMES["int4"], "kwargs": {"group_size": group}}


def _value(value: Any) -> Any:
    """A config argument from its JSON form: ``per_row`` is torchao's ``PerRow()``."""
    return _torchao().quantization.PerRow() if value == "per_row" else value


def _quantized(module: nn.Module) -> bool:
    return hasattr(getattr(module, "weight", None), "__tensor_flatten__")


def _precision(weight: Any) -> str:
    """The plan precision a torchao weight tensor stands for."""
    kind = type(weight).__name__
    if kind.startswith("Int4"):
        return "int4"
    dynamic = getattr(weight, "act_quant_kwargs", None) is not None
    if kind == "Float8Tensor":
        return "wf8af8" if dynamic else "fp8"
    return "w8a8" if dynamic else "int8"


def _layer_record(module: nn.Module) -> dict[str, Any]:
    """A quantized layer's precision and config, as the checkpoint's plan records them."""
    precision = _precision(module.weight)
    return {"precision": precision, **_settings(precision, module)}
