"""The interface every quantization backend implements.

A backend turns backend-neutral plans (``layer -> int8 | int4 | int2 | fp8 | float``) into
quantized modules, says what they store and how they run, and saves and reloads them. The
rest of quide-search (the layer cache, the scorer, the export) speaks only this interface.
"""

from __future__ import annotations

import abc
import contextlib
import copy
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from quide_search.errors import PlanError, TrialEvaluationError

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from torch import nn

    from quide_search.plan import BitPlan

__all__ = ["QuantBackend", "layer_failures", "model_bytes", "storage_key"]


class QuantBackend(abc.ABC):
    """One quantization library behind quide-search's plans.

    Implementations live one per file in ``quide_search/backends`` and are looked up by
    :attr:`name` (:func:`quide_search.backends.get_backend`).
    """

    name: str = ""

    @abc.abstractmethod
    def version(self) -> str:
        """The library's version, recorded in every study and exported plan."""

    @abc.abstractmethod
    def precisions(self, device: torch.device) -> Mapping[str, int]:
        """The precisions this backend can run on ``device``, with their weight bits."""

    @abc.abstractmethod
    def layer_types(self) -> tuple[type[nn.Module], ...]:
        """The module types a plan may quantize."""

    @abc.abstractmethod
    def quantize_layer(self, module: nn.Module, precision: str) -> nn.Module:
        """Return a frozen quantized copy of one float layer; the layer is not changed.

        Raises:
            TrialEvaluationError: If the library fails on the layer.
        """

    @abc.abstractmethod
    def kernel_path(self, quantized: nn.Module) -> str:
        """How the layer runs: ``kernel:NAME`` (a low-bit kernel) or ``fallback``
        (the weight is dequantized and the float operation runs)."""

    @abc.abstractmethod
    def quantization_map(self, plan: BitPlan) -> dict[str, Any]:
        """The plan in the library's own serialisable form (what its loaders accept)."""

    @abc.abstractmethod
    def save(self, model: nn.Module, folder: Path) -> list[str]:
        """Write a frozen quantized model's files into ``folder``; return their names."""

    @abc.abstractmethod
    def load(self, skeleton: nn.Module, folder: Path) -> nn.Module:
        """Quantize the float ``skeleton`` in place with the weights saved in ``folder``.

        Raises:
            DataError: If the folder lacks the files :meth:`save` writes.
            PlanError: If they name layers the skeleton lacks.
        """

    def loading_note(self, model: nn.Module) -> str:
        """Markdown for a checkpoint's README: how to load :meth:`save`'s files without
        quide-search, or an empty string."""
        return ""

    def float_twin(self, quantized: nn.Module) -> nn.Module | None:
        """A float module with the same outputs as ``quantized`` but cheaper to run, or None.

        Where a layer is run by dequantizing its weight on every call, evaluation can use
        the weight dequantized once; latency never does.
        """
        return None

    def hazard(
        self,
        model: nn.Module,
        device: torch.device,
        precisions: Sequence[str],
        layers: Sequence[str] | None = None,
    ) -> str | None:
        """Why a choice of precisions would crash the process on this model and device
        (``layers``: the searched ones, default every quantizable layer)."""
        return None

    def quantizable_layers(self, model: nn.Module) -> dict[str, int]:
        """Return module name -> weight element count of every layer a plan may quantize.

        The order is the module order, which is also the order of the search space.
        """
        types = self.layer_types()
        counts: dict[str, int] = {}
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if name and isinstance(module, types) and weight is not None:
                counts[name] = int(weight.numel())
        return counts

    def float_kinds(self, model: nn.Module) -> dict[str, int]:
        """Return module type name -> count of the layers this backend leaves in float.

        A layer here is a module holding a weight matrix or kernel of its own (a parameter of
        two or more dimensions: an Embedding, a ConvTranspose2d, a Conv1d) that is not of
        :meth:`layer_types`. Norm layers' 1-D scales are not weights a plan quantizes.
        """
        types = self.layer_types()
        return dict(Counter(
            type(module).__name__
            for module in model.modules()
            if not isinstance(module, types)
            and any(p.dim() >= 2 for p in module.parameters(recurse=False))
        ))  # fmt: skip

    def apply(self, model: nn.Module, plan: BitPlan, *, inplace: bool = False) -> nn.Module:
        """Return a copy of ``model`` with ``plan`` applied, layer by layer, frozen.

        Quantizing a layer on its own gives the same module as quantizing it inside the
        whole model (each layer's weights are quantized independently), so a plan is
        applied by replacing each planned layer with :meth:`quantize_layer`'s result.

        Raises:
            PlanError: If a plan layer is not a quantizable layer of ``model``.
            TrialEvaluationError: If the library fails on a layer.
        """
        plan.validate_layers(self.quantizable_layers(model))
        target = model if inplace else copy.deepcopy(model)
        for name, precision in plan.quantized_layers().items():
            target.set_submodule(name, self.quantize_layer(target.get_submodule(name), precision))
        return target

    def check_checkpoint_layers(self, names: Sequence[str], skeleton: nn.Module) -> None:
        """Refuse a checkpoint whose plan names a layer the float ``skeleton`` lacks.

        Raises:
            PlanError: Naming the first such layer.
        """
        layers = self.quantizable_layers(skeleton)
        unknown = [name for name in names if name not in layers]
        if unknown:
            raise PlanError(
                f"the checkpoint's plan names layer {unknown[0]!r}, which the skeleton lacks. "
                "Build the skeleton exactly as the exported model."
            )

    def check_precisions(self, precisions: Sequence[str], device: torch.device) -> None:
        """Refuse precisions this backend cannot run on ``device``.

        Raises:
            PlanError: Naming the precision, the device and what the backend offers.
        """
        offered = self.precisions(device)
        for precision in precisions:
            if precision != "float" and precision not in offered:
                raise PlanError(
                    f"--bits must be precisions the {self.name} backend runs on "
                    f"{device.type}, but {precision!r} is not among them. It offers "
                    f"{', '.join(offered)}."
                )


@contextlib.contextmanager
def layer_failures(library: str, module: nn.Module, precision: str) -> Iterator[None]:
    """Turn a library's failure on one layer into :class:`TrialEvaluationError`.

    Whatever the library raises while quantizing one layer fails that trial, not the run.
    """
    try:
        yield
    except MemoryError as e:
        raise TrialEvaluationError(f"out of memory while quantizing: {e}") from e
    except Exception as e:  # a library may raise anything on a layer it cannot take
        raise TrialEvaluationError(
            f"{library} could not quantize a {type(module).__name__} to {precision}: "
            f"{type(e).__name__}: {e}"
        ) from e


def model_bytes(model: nn.Module) -> int:
    """Return the bytes a module stores: every tensor of its state dict, counted once.

    For a frozen quantized model the state dict holds the packed integer data, the scales
    and shifts, and every tensor left in float: what a checkpoint of it contains. A tensor
    subclass that wraps others (torchao's quantized weights report the float dtype and shape
    they stand for) is counted by the tensors inside it. Tensors that share storage (tied
    weights) are counted once.
    """

    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in _leaves(model.state_dict().values()):
        key = storage_key(tensor)
        if key in seen and tensor.numel() > 0:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


def _leaves(tensors: Any) -> list[torch.Tensor]:
    """The plain tensors holding the data of ``tensors``, unwrapping tensor subclasses."""
    import torch

    found: list[torch.Tensor] = []
    for tensor in tensors:
        if not isinstance(tensor, torch.Tensor):
            continue
        flatten = getattr(tensor, "__tensor_flatten__", None)
        if flatten is None:
            found.append(tensor)
            continue
        names, _ = flatten()
        found += _leaves(getattr(tensor, name) for name in names)
    return found


def storage_key(tensor: torch.Tensor) -> tuple[int, int]:
    """Where a tensor's data starts: equal for tensors that share it (tied weights)."""
    return (tensor.untyped_storage().data_ptr(), int(tensor.storage_offset()))
