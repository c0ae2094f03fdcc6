"""The two kinds of backend: one that quantizes layer by layer, one that builds whole models.

:class:`LayerBackend` (quanto, torchao) replaces each planned layer by a quantized module built
from that layer alone, so a study builds each (layer, precision) once and assembles plans from
them (:class:`~quide_search.measure.assembly.LayerCache`). :class:`WholeModelBackend` (ONNX
Runtime) makes the whole model for a plan in one piece (:class:`BuiltModel`), so a study builds
each plan (:class:`~quide_search.measure.builder.PlanBuilder`). Both are
:class:`~quide_search.backends._base.QuantBackend`: listing, precisions, exclusions, saving.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quide_search.backends._base import QuantBackend
from quide_search.errors import PlanError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from quide_search.plan import BitPlan

__all__ = ["BuiltModel", "LayerBackend", "WholeModelBackend"]


class LayerBackend(QuantBackend):
    """A backend that quantizes layer by layer: each planned layer is replaced by a quantized
    module built from that layer alone (quanto, torchao). A study keeps each (layer,
    precision) built once and assembles every plan from them
    (:class:`~quide_search.measure.assembly.LayerCache`)."""

    @abc.abstractmethod
    def quantize_layer(
        self,
        module: nn.Module,
        precision: str,
        inputs: Sequence[tuple[Any, ...]] | None = None,
    ) -> nn.Module:
        """Return a frozen quantized copy of one float layer; the layer is not changed.

        Args:
            inputs: What the layer receives on calibration data, one tuple of positional
                inputs per batch (:class:`~quide_search.backends.calibration.LayerInputs`);
                needed where :meth:`calibrated` says so, ignored elsewhere.

        Raises:
            PlanError: If ``precision`` is calibrated and ``inputs`` is empty.
            TrialEvaluationError: If the library fails on the layer.
        """

    @abc.abstractmethod
    def kernel_path(self, quantized: nn.Module) -> str:
        """How the layer runs: ``kernel:NAME`` (a low-bit kernel) or ``fallback``
        (the weight is dequantized and the float operation runs)."""

    def float_twin(self, quantized: nn.Module) -> nn.Module | None:
        """A float module with the same outputs as ``quantized`` but cheaper to run, or None.

        Where a layer is run by dequantizing its weight on every call, evaluation can use
        the weight dequantized once; latency never does.
        """
        return None

    def apply(
        self,
        model: nn.Module,
        plan: BitPlan,
        *,
        inplace: bool = False,
        calibration: torch.Tensor | None = None,
        threads: int | None = None,
    ) -> nn.Module:
        """Return a copy of ``model`` with ``plan`` applied, layer by layer, frozen.

        Quantizing a layer on its own gives the same module as quantizing it inside the
        whole model (each layer's weights are quantized independently, and a calibrated
        layer's scales are fitted on what it receives in the float model), so a plan is
        applied by replacing each planned layer with :meth:`quantize_layer`'s result.

        Args:
            inplace: Change ``model`` itself.
            calibration: Model inputs (samples first) for the plan's calibrated precisions:
                the first :data:`~quide_search.backends.calibration.CALIBRATION_SAMPLES` of
                the task's calibration split, as a study uses.
            threads: torch threads the calibration passes run with.

        Raises:
            PlanError: If a plan layer is not a quantizable layer of ``model``, or the plan
                has a calibrated precision and no ``calibration`` is given.
            TrialEvaluationError: If the library fails on a layer.
        """
        from quide_search.backends.calibration import LayerInputs

        plan.validate_layers(self.quantizable_layers(model))
        wanted = plan.quantized_layers()
        inputs = None if calibration is None else LayerInputs(model, calibration, threads=threads)
        # Every layer is built from the untouched float model before any is swapped in, so a
        # calibrated layer sees float inputs, as in a study.
        built = {
            name: self.quantize_layer(
                model.get_submodule(name),
                precision,
                inputs(name) if inputs is not None and self.calibrated(precision) else None,
            )
            for name, precision in wanted.items()
        }
        target = model if inplace else copy.deepcopy(model)
        for name, module in built.items():
            target.set_submodule(name, module)
        return target

    def check_inputs(self, precision: str, inputs: Sequence[tuple[Any, ...]] | None) -> None:
        """Refuse to build a calibrated ``precision`` without calibration inputs.

        Raises:
            PlanError: Naming the precision and what to pass.
        """
        if self.calibrated(precision) and not inputs:
            raise PlanError(
                f"{precision} on the {self.name} backend calibrates static activation scales, "
                "but no calibration inputs were given. Pass the task's calibration samples "
                "(apply(..., calibration=...))."
            )


@dataclass(frozen=True)
class BuiltModel:
    """A whole model built for one plan by a :class:`WholeModelBackend`.

    Attributes:
        module: Runs the plan; called like the float model (inputs and outputs are torch
            tensors on the CPU).
        stored_bytes: The bytes the quantized model stores (its weights, scales and every
            constant left in float).
        layer_bytes: Each quantizable layer -> the bytes of the constants only it uses.
        kernels: Each quantized layer -> ``kernel:OP``, the low-bit operator that runs it.
    """

    module: nn.Module
    stored_bytes: int
    layer_bytes: dict[str, int]
    kernels: dict[str, str]


class WholeModelBackend(QuantBackend):
    """A backend that builds the whole model for each plan (ONNX Runtime: the model is
    exported and calibrated once per model, each plan quantizes exactly its layers of that
    graph, and a session runs it). A study keeps the last plans built
    (:class:`~quide_search.measure.builder.PlanBuilder`)."""

    @abc.abstractmethod
    def build(
        self,
        model: nn.Module,
        plan: BitPlan,
        *,
        calibration: torch.Tensor | None = None,
        threads: int | None = None,
    ) -> BuiltModel:
        """Build ``plan`` on the float ``model``.

        Args:
            calibration: Model inputs (samples first): the graph is made on their shape, and
                static activation scales are fitted on them.
            threads: Threads the built model runs with (None: the runtime's default).

        Raises:
            PlanError: If a plan layer is not a quantizable layer of ``model``, cannot take its
                precision, or ``calibration`` is missing.
            TrialEvaluationError: If the library fails, or leaves a planned layer without a
                low-bit kernel.
        """

    def apply(
        self,
        model: nn.Module,
        plan: BitPlan,
        *,
        inplace: bool = False,
        calibration: torch.Tensor | None = None,
        threads: int | None = None,
    ) -> nn.Module:
        """The module of :meth:`build` (``inplace`` has no meaning here: ``model`` is never
        changed)."""
        return self.build(model, plan, calibration=calibration, threads=threads).module

    @abc.abstractmethod
    def layer_profile(
        self, built: BuiltModel, call: Callable[[nn.Module], object], runs: int
    ) -> dict[str, float]:
        """Each quantizable layer's time in ``built``, in ms per ``call`` (one timed call of
        a module like ``built.module``: a forward of the timed input, or a greedy decode),
        from the runtime's own per-operator profiler over ``runs`` calls (a latency table's
        rows).

        Raises:
            TrialEvaluationError: If profiling fails.
        """
