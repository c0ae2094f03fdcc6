"""The torchao backend: int8, int4 and float8 weight-only, and W8A8, for Linear layers.

Precisions (``--backend torchao``), with the torchao 0.18 configuration each one applies:

- ``int8``: ``Int8WeightOnlyConfig`` (per-row scales). On a CPU the int8 weight is cast to the
  activation dtype on every call and a float matmul runs: no low-bit kernel (``fallback``).
- ``w8a8``: ``Int8DynamicActivationInt8WeightConfig``: activations quantized to int8 per row
  on every call, int8 weights, ``torch._int_mm`` (``kernel:int_mm``).
- ``int4`` (CPU only): ``PrototypeInt4WeightOnlyConfig``, torchao's opaque CPU layout run by
  ``torch._weight_int4pack_mm_for_cpu`` (``kernel:int4pack_mm_cpu``). The group size is the
  largest of 128, 64 and 32 that divides the layer's ``in_features``; the kernel also needs
  ``out_features`` divisible by 16. A layer that breaks either is refused before a study
  starts (:meth:`TorchaoBackend.hazard`), never skipped.
- ``fp8``: ``Float8WeightOnlyConfig`` (float8 e4m3 weights, per-row scales; the weight is cast
  back for a float matmul: ``fallback``).

Not offered, and refused before a study with the reason: float8 weights *and* activations
(``wf8af8``, torchao's ``Float8DynamicActivationFloat8WeightConfig``, which needs CUDA compute
capability 8.9) and int4 on CUDA (tinygemm's or mslk's formats). Their configs have never run
in this project (no GPU was lent); ``benchmarks/gpu_check.py --parts torchao`` times them
with torchao directly where a GPU is.

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
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quide_search.backends._base import layer_failures
from quide_search.backends._kinds import LayerBackend
from quide_search.errors import DataError, PlanError, TrialEvaluationError
from quide_search.plan import PRECISIONS, BitPlan, activation_precision, weight_precision

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["PLAN_FILE", "WEIGHTS_FILE", "TorchaoBackend", "int4_group_size"]

WEIGHTS_FILE = "model.pt"
PLAN_FILE = "torchao_plan.json"
_GROUP_SIZES = (128, 64, 32)
_KERNELS = {"Int4OpaqueTensor": "kernel:int4pack_mm_cpu"}


def int4_group_size(in_features: int) -> int | None:
    """The int4 group size of a layer: the largest of 128, 64, 32 dividing ``in_features``."""
    return next((g for g in _GROUP_SIZES if in_features % g == 0), None)


class TorchaoBackend(LayerBackend):
    """torchao 0.18: int8, int4 and float8 weight-only, and W8A8 (dynamic int8 activations)."""

    name = "torchao"

    def version(self) -> str:
        return str(_torchao().__version__)

    def precisions(self, device: torch.device) -> Mapping[str, int]:
        """int8, w8a8 and fp8 on any device; int4 on a CPU (torchao's CPU layout)."""
        offered = ("int8", "int4", "w8a8", "fp8")
        return {q: PRECISIONS[q] for q in offered if _unavailable(q, device) is None}

    def refusals(self, device: torch.device) -> Mapping[str, str]:
        """int4 off a CPU, and float8 weights and activations (``wf8af8``) everywhere."""
        return {q: why for q in ("int4", "wf8af8") if (why := _unavailable(q, device))}

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
        """``kernel:int_mm`` for W8A8, ``kernel:int4pack_mm_cpu`` for int4 on a CPU, and
        ``fallback`` for int8 and float8 weight-only (the weight is cast to the activations'
        dtype, then a float matmul runs)."""
        weight = getattr(quantized, "weight", None)
        kind = type(weight).__name__
        if kind == "Int8Tensor" and getattr(weight, "act_quant_kwargs", None) is not None:
            return "kernel:int_mm"
        return _KERNELS.get(kind, "fallback")

    def hazard(
        self,
        model: nn.Module,
        device: torch.device,
        precisions: Sequence[str],
        layers: Sequence[str] | None = None,
    ) -> str | None:
        """int4 needs every searched Linear's ``in_features`` divisible by 32 and
        ``out_features`` by 16 (the CPU int4 packing's shapes); layers left out of the search
        (a causal LM's ``lm_head``) are not checked."""
        if "int4" not in precisions:
            return None
        unfit = _int4_unfit(model, self.quantizable_layers(model) if layers is None else layers)
        if not unfit:
            return None
        refused = [f"{name} ({shape})" for name, shape in unfit.items()]
        return (
            f"{_INT4_SHAPES}, but {', '.join(refused[:5])} "
            f"{'does' if len(refused) == 1 else 'do'} not. Leave 4 out of --bits (or those "
            "layers out of int4), or use --backend quanto."
        )

    def unfit_layers(
        self,
        model: nn.Module,
        device: torch.device,
        precisions: Sequence[str],
        layers: Sequence[str],
        *,
        example: torch.Tensor | None = None,
    ) -> dict[str, dict[str, str]]:
        """The Linears of ``layers`` whose shape int4's CPU packing cannot take."""
        if "int4" not in precisions:
            return {}
        return {
            name: {"int4": f"its shape {shape} does not fit torchao's CPU int4 layout, which "
                           "needs in_features divisible by 32 and out_features by 16"}
            for name, shape in _int4_unfit(model, layers).items()
        }  # fmt: skip

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
for fqn, layer in json.load(open(f"{{folder}}/{PLAN_FILE}")).items():
    config = Cpu4 if layer["config"] == Cpu4.__name__ else getattr(tq, layer["config"])
    tq.quantize_(model.get_submodule(fqn), config(**layer["kwargs"]))
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
}


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


_INT4_SHAPES = (
    "int4 on the torchao backend needs each Linear's in_features divisible by 32 and "
    "out_features by 16 (torchao's CPU int4 layout)"
)


def _int4_unfit(model: nn.Module, layers: Iterable[str]) -> dict[str, str]:
    """The Linears among ``layers`` that int4's CPU packing cannot take: name -> shape."""
    from torch import nn

    searched = set(layers)
    return {
        name: f"{module.in_features} -> {module.out_features}"
        for name, module in model.named_modules()
        if name in searched
        and isinstance(module, nn.Linear)
        and (int4_group_size(module.in_features) is None or module.out_features % 16)
    }


def _unavailable(precision: str, device: torch.device) -> str | None:
    """Why this backend does not offer ``precision`` on ``device``, or None."""
    if precision == "wf8af8":
        return (
            "is not offered: torchao's float8 weights and activations need a CUDA GPU of "
            "compute capability 8.9 or more, and this backend has not run them on one"
        )
    if precision == "int4" and device.type != "cpu":
        return (
            f"is offered on a CPU only: torchao's int4 formats for {device.type} (tinygemm, "
            "mslk) have not been run by this backend"
        )
    return None


def _config(precision: str, module: nn.Module) -> Any:
    """The torchao configuration of ``precision`` for one Linear."""
    if precision == "int4":
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

        group = int4_group_size(int(module.in_features))  # type: ignore[arg-type]
        if group is None:
            raise ValueError(f"in_features {module.in_features} is not divisible by 32")
        return PrototypeInt4WeightOnlyConfig(group_size=group)
    if precision not in _CONFIG_NAMES:
        raise ValueError(f"the torchao backend has no {precision!r}")
    return getattr(_torchao().quantization, _CONFIG_NAMES[precision])()


def _quantized(module: nn.Module) -> bool:
    return hasattr(getattr(module, "weight", None), "__tensor_flatten__")


def _layer_record(module: nn.Module) -> dict[str, Any]:
    """A quantized layer's precision and config (name and arguments, as JSON), as the
    checkpoint's plan records them; read off the tensor torchao stored."""
    weight: Any = module.weight
    kind = type(weight).__name__
    if kind == "Int4OpaqueTensor":
        group = int(weight.block_size[-1])
        return {"precision": "int4", "config": _CONFIG_NAMES["int4"],
                "kwargs": {"group_size": group}}  # fmt: skip
    if kind == "Float8Tensor":
        return {"precision": "fp8", "config": _CONFIG_NAMES["fp8"], "kwargs": {}}
    precision = "w8a8" if weight.act_quant_kwargs is not None else "int8"
    return {"precision": precision, "config": _CONFIG_NAMES[precision], "kwargs": {}}
