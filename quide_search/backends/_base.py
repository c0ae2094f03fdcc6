"""The interface every quantization backend implements.

A backend turns backend-neutral plans (``layer -> int8 | int4 | int2 | fp8 | float``) into
quantized models, says what they store and how they run, and saves and reloads them. The
rest of quide-search (the scorer, the latency sources, the export) speaks only this interface
and one of its two kinds (:mod:`quide_search.backends._kinds`): a backend that quantizes layer
by layer, or one that builds the whole model for each plan.
"""

from __future__ import annotations

import abc
import contextlib
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
    recipe_needs: str = (
        "recipe: Python that imports only torch and the backend; it expects `model`, the float "
        "model built as the exported one, and `folder`, this folder's path, and leaves the "
        "quantized model in `model`. null: load with quide_search.load_quantized."
    )
    """What :meth:`loading_recipe`'s code expects and leaves (``plan.json``'s ``loading``)."""
    saves_onnx: bool = False
    """Whether :meth:`save` writes the plan's model as an ONNX graph (``export --format onnx``)."""

    @abc.abstractmethod
    def version(self) -> str:
        """The library's version, recorded in every study and exported plan."""

    @abc.abstractmethod
    def precisions(self, device: torch.device) -> Mapping[str, int]:
        """The precisions this backend can run on ``device``, with their weight bits."""

    @abc.abstractmethod
    def layer_types(self) -> tuple[type[nn.Module], ...]:
        """The module types a plan may quantize."""

    def layer_kinds(self) -> str:
        """The layer types a plan may quantize, in words (for listings)."""
        return ", ".join(t.__name__ for t in self.layer_types())

    def refusals(self, device: torch.device) -> Mapping[str, str]:
        """Precisions the field names that this backend does not run on ``device``, each with
        a reason worth telling (a phrase that follows the precision's name: "is offered on a
        CPU only: ..."); the rest of what it lacks needs none."""
        return {}

    def settings_record(self) -> dict[str, Any]:
        """The settings this backend chose for this machine (kernel choices read from the
        CPU's flags), recorded in the protocol; empty where it chooses none."""
        return {}

    def calibrated(self, precision: str) -> bool:
        """Whether ``precision`` fits static scales on calibration inputs (static activation
        quantization); such a layer needs calibration inputs to be built."""
        return False

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

    def loading_recipe(self, model: nn.Module) -> str | None:
        """Python (at most 10 lines) that loads :meth:`save`'s files without quide-search.

        It expects ``model``, the float model built as the exported one was, and ``folder``,
        the checkpoint folder's path as a string, and leaves the quantized model in
        ``model``; it imports only torch and the backend's library. None where the files
        need quide-search's own loader. Checkpoints carry it in ``plan.json`` (``loading``)
        and in their README.
        """
        return None

    def transformers_config(self, plan: BitPlan, model: nn.Module | None) -> Any:
        """The transformers quantization config that applies ``plan`` to the causal LM
        ``model`` on load, and that ``save_pretrained`` can serialise. With ``model`` None,
        only check that the plan has one (None is returned).

        Raises:
            PlanError: Saying why transformers cannot hold this plan with this backend.
        """
        raise PlanError(
            f"--format transformers needs a backend transformers can save and reload, but the "
            f"{self.name} backend has no such form. Use --checkpoint instead."
        )

    def hazard(
        self,
        model: nn.Module,
        device: torch.device,
        precisions: Sequence[str],
        layers: Sequence[str] | None = None,
    ) -> str | None:
        """Why a choice of precisions would crash the process on this model and device
        (``layers``: the searched ones, default every quantizable layer), or None. The first
        sentence says what fails; the rest, what to do in a search (``evaluate --backend``
        keeps only the first)."""
        return None

    def unfit_layers(
        self,
        model: nn.Module,
        device: torch.device,
        precisions: Sequence[str],
        layers: Sequence[str],
        *,
        example: torch.Tensor | None = None,
    ) -> dict[str, dict[str, str]]:
        """The ``layers`` that cannot run some of ``precisions`` for their shape (or, given a
        model input ``example``, for how the model computes them): layer -> {precision: why}.
        A search leaves those precisions out of those layers' choices
        (:func:`quide_search.protocol_builder.build_protocol`); :meth:`hazard` still refuses a
        plan that puts a layer at one."""
        return {}

    def default_bits(
        self,
        device: torch.device,
        activations: Sequence[str] = ("none",),
        *,
        causal_lm: bool = False,
    ) -> tuple[str, ...]:
        """The ``--bits`` of a search that names none: each of int8, int4 and int2 that this
        backend runs on ``device`` with every one of ``activations`` (whether the model is a
        ``causal_lm`` or not, unless a backend says otherwise).

        Raises:
            ConfigError: If none of them is offered.
        """
        from quide_search.errors import ConfigError
        from quide_search.plan import with_activations

        offered = self.precisions(device)
        bits = tuple(
            q
            for q in ("int8", "int4", "int2")
            if all(p in offered for p in with_activations((q,), activations))
        )
        if not bits:
            raise ConfigError(
                f"--bits must be given here: the {self.name} backend runs none of int8, int4, "
                f"int2 on {device.type} with activations {', '.join(activations)}; it offers "
                f"{', '.join(offered)}."
            )
        return bits

    def search_exclusions(
        self,
        model: nn.Module,
        device: torch.device,
        precisions: Sequence[str],
        layers: Sequence[str],
        *,
        example: torch.Tensor | None = None,
    ) -> dict[str, dict[str, str]]:
        """What each of the searched ``layers`` cannot run of ``precisions`` (layer ->
        {precision: why}), checked to leave a search: see :meth:`unfit_layers`.

        Raises:
            ConfigError: If no searched layer can run one of ``precisions``, if a layer can
                run none of them, or if a precision would crash the process on the layers
                left at it (:meth:`hazard`).
        """
        from quide_search.errors import ConfigError

        excluded = self.unfit_layers(model, device, precisions, layers, example=example)
        for precision in precisions:
            able = [name for name in layers if precision not in excluded.get(name, {})]
            why = self.hazard(model, device, (precision,), able or layers)
            if why is None and not able:
                reasons = sorted({refused[precision] for refused in excluded.values()})
                why = (
                    f"--bits must give precisions some searched layer can run, but no layer "
                    f"runs {precision} on the {self.name} backend ({'; '.join(reasons)}). "
                    "Leave it out of --bits."
                )
            if why is not None:
                raise ConfigError(why)
        for name, refused in excluded.items():
            if all(q in refused for q in precisions):
                others = [q for q in self.precisions(device) if q not in precisions]
                unfit = self.unfit_layers(model, device, others, [name], example=example)
                can = [q for q in others if q not in unfit.get(name, {})] + ["fp"]
                raise ConfigError(
                    f"every searched layer must run one of --bits, but {name} runs none of "
                    f"{', '.join(precisions)} on the {self.name} backend "
                    f"({'; '.join(sorted(set(refused.values())))}). Add one it can run to "
                    f"--bits ({', '.join(can)}), or use another --backend."
                )
        return excluded

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

    @abc.abstractmethod
    def apply(
        self,
        model: nn.Module,
        plan: BitPlan,
        *,
        inplace: bool = False,
        calibration: torch.Tensor | None = None,
        threads: int | None = None,
    ) -> nn.Module:
        """Return ``model`` with ``plan`` applied, frozen (a copy unless ``inplace``).

        Args:
            calibration: Model inputs (samples first) for the plan's calibrated precisions:
                the first :data:`~quide_search.backends.calibration.CALIBRATION_SAMPLES` of
                the task's calibration split, as a study uses.
            threads: Threads the calibration passes (or the built model) run with.

        Raises:
            PlanError: If a plan layer is not a quantizable layer of ``model``, or the plan
                needs ``calibration`` and none is given.
            TrialEvaluationError: If the library fails on a layer.
        """

    def calibration_needed(self, precisions: Sequence[str]) -> bool:
        """Whether a search over ``precisions`` needs calibration samples: where one of them
        is :meth:`calibrated`."""
        return any(self.calibrated(p) for p in precisions)

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
        from quide_search.plan import activation_precision

        offered = self.precisions(device)
        for precision in precisions:
            if precision != "float" and precision not in offered:
                paired = activation_precision(precision) is not None
                raise PlanError(
                    f"{'--bits and --activations' if paired else '--bits'} must give precisions "
                    f"the {self.name} backend runs on {device.type}, but {precision!r} is not "
                    f"among them. It offers {', '.join(offered)}."
                    + (
                        " --activations pairs every --bits entry; to mix, name each "
                        "precision in --bits (e.g. --bits 8,w8a8)."
                        if paired
                        else ""
                    )
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
