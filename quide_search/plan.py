"""Bit-plans: which precision each quantizable layer gets, keyed by module name.

A plan is the unit the search proposes, the trial applies and the export ships. Its values are
backend-neutral precision names (``int8``, ``int4``, ``int2``, ``fp8``, ``float``); the plan
also names the backend that applies them (``quanto``), which turns them into its own form
(``quide_search.backends``). This is the one place the names and their weight bits are listed.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from quide_search.errors import ConfigError, PlanError, did_you_mean

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_BACKEND",
    "FLOAT",
    "PLAN_SCHEMA_VERSION",
    "PRECISIONS",
    "BitPlan",
    "activation_precision",
    "normalize_precision",
    "parse_activations",
    "group_layers",
    "parse_bits",
    "uniform_layers",
    "weight_bits",
    "weight_precision",
    "with_activations",
]

PLAN_SCHEMA_VERSION = 2
DEFAULT_BACKEND = "quanto"
FLOAT = "float"
"""The plan value of a layer kept in the model's own float dtype."""

_WEIGHT_ONLY = {"int8": 8, "int4": 4, "int2": 2, "fp8": 8}
_CODE = {"int8": "8", "int4": "4", "int2": "2", "fp8": "f8"}
ACTIVATIONS: tuple[str, ...] = ("none", "int8", "fp8")
"""Activation precisions a layer may take: float (``none``), int8 or float8 (e4m3)."""

# W{w}A{a}: the field's name for weights of w bits and activations of a bits; "f8" marks a
# float8 format (wf8af8: float8 weights and activations).
_COMPOSITE: Mapping[str, tuple[str, str]] = MappingProxyType(
    {f"w{_CODE[w]}a{_CODE[a]}": (w, a) for a in ACTIVATIONS[1:] for w in _WEIGHT_ONLY}
)

PRECISIONS: Mapping[str, int] = MappingProxyType(
    {**_WEIGHT_ONLY, **{name: _WEIGHT_ONLY[w] for name, (w, _) in _COMPOSITE.items()}, FLOAT: 0}
)
"""Every precision name a plan may hold, and its weight bits (0: the model's own float width).

``int8``, ``int4``, ``int2`` and ``fp8`` are weight-only: activations stay in float. The
``W{w}A{a}`` names (``w8a8``, ``w4a8``, ``w8af8``, ``wf8af8``, ...) quantize the layer's input
activations as well, to int8 (``a8``) or float8 (``af8``). How the activation scale is found is
the backend's: torchao's ``w8a8`` quantizes each row on every call (dynamic); quanto calibrates
one static scale per layer on the calibration split (docs/backends.md)."""
_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "8": "int8", "int8": "int8", "qint8": "int8",
        "4": "int4", "int4": "int4", "qint4": "int4",
        "2": "int2", "int2": "int2", "qint2": "int2",
        "f8": "fp8", "fp8": "fp8", "float8": "fp8", "qfloat8": "fp8", "qfloat8_e4m3fn": "fp8",
        **{name: name for name in _COMPOSITE},
        "fp": FLOAT, "fp32": FLOAT, "float": FLOAT, "none": FLOAT,
    }
)  # fmt: skip
_SPELLINGS = (
    "int8 (8), int4 (4), int2 (2), fp8 (f8), float (fp), or weights and activations "
    "W{8,4,2,f8}A{8,f8} such as w8a8, w4a8"
)


def weight_bits(precision: str, *, float_bits: int = 32) -> int:
    """Return the weight bits of a precision name, counting ``float`` as ``float_bits``."""
    return PRECISIONS[precision] or float_bits


def weight_precision(precision: str) -> str:
    """Return the weight part of a precision: ``w4a8`` -> ``int4``, ``int4`` -> ``int4``."""
    return _COMPOSITE[precision][0] if precision in _COMPOSITE else precision


def activation_precision(precision: str) -> str | None:
    """Return the activation part of a precision (``int8``, ``fp8``), None if weight-only."""
    return _COMPOSITE[precision][1] if precision in _COMPOSITE else None


def parse_activations(text: str) -> tuple[str, ...]:
    """Parse an ``--activations`` list such as ``"none,int8"``.

    Raises:
        ConfigError: For an empty list, a duplicate or a name outside :data:`ACTIVATIONS`.
    """
    aliases = {"none": "none", "float": "none", "int8": "int8", "8": "int8", "fp8": "fp8",
               "f8": "fp8", "float8": "fp8"}  # fmt: skip
    items = [t.strip().lower() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in aliases]
    if not items or unknown:
        raise ConfigError(
            f"--activations must list activation precisions among none, int8 and fp8, but got "
            f"{text!r}. Use e.g. --activations none,int8."
        )
    values = tuple(aliases[t] for t in items)
    if len(set(values)) != len(values):
        raise ConfigError(f"--activations must not repeat a precision, but got {text!r}.")
    return values


def with_activations(bits: Iterable[str], activations: Iterable[str]) -> tuple[str, ...]:
    """Return each weight precision of ``bits`` paired with each activation precision.

    ``none`` keeps the weight-only name; ``float`` stays once; a name that already says its
    activations is kept as it is.

    Example:
        >>> with_activations(["float", "int8", "int4"], ["none", "int8"])
        ('float', 'int8', 'w8a8', 'int4', 'w4a8')
    """
    acts = tuple(activations)
    out: list[str] = []
    for precision in bits:
        if precision == FLOAT or precision in _COMPOSITE:
            paired = [precision]
        else:
            paired = [
                precision if a == "none" else f"w{_CODE[precision]}a{_CODE[a]}" for a in acts
            ]
        out += [p for p in paired if p not in out]
    return tuple(out)


def normalize_precision(value: object, *, where: str = "precision") -> str:
    """Return the canonical name of a precision given by name, alias or backend object.

    Raises:
        PlanError: For an unknown name, listing the accepted ones.

    Example:
        >>> normalize_precision("4"), normalize_precision("qfloat8"), normalize_precision("fp")
        ('int4', 'fp8', 'float')
    """
    name = getattr(value, "name", value)
    if not isinstance(name, str):
        raise PlanError(f"{where} must be a string, but got {value!r}. Use {_SPELLINGS}.")
    key = name.strip().lower()
    if key not in _ALIASES:
        raise PlanError(
            f"{where} must be one of {_SPELLINGS}, but got {name!r}." + did_you_mean(key, _ALIASES)
        )
    return _ALIASES[key]


def parse_bits(text: str, *, flag: str = "--bits") -> tuple[str, ...]:
    """Parse a ``--bits`` list such as ``"8,4,2"`` or ``"float,8,4,2,f8"`` into precisions.

    Raises:
        ConfigError: For an empty list, a duplicate or an unknown precision.
    """
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"{flag} must list at least one precision, but got {text!r}.")
    unknown = [t for t in items if t.lower() not in _ALIASES]
    if unknown:
        raise ConfigError(
            f"{flag} must list precisions among {_SPELLINGS}, but got {text!r} (unknown: "
            f"{', '.join(unknown)})." + did_you_mean(unknown[0].lower(), _ALIASES)
        )
    values = tuple(_ALIASES[t.lower()] for t in items)
    if len(set(values)) != len(values):
        raise ConfigError(f"{flag} must not repeat a precision, but got {text!r}.")
    return values


_BLOCK = re.compile(r"^(.*?\.\d+)(\.|$)")


def group_layers(layers: Sequence[str], granularity: str) -> dict[str, list[str]]:
    """Return search parameter -> the layers it sets, for ``--granularity``.

    Example:
        >>> group_layers(["m.layers.0.q", "m.layers.0.k", "m.head"], "block")
        {'m.layers.0': ['m.layers.0.q', 'm.layers.0.k'], 'm.head': ['m.head']}
    """
    groups: dict[str, list[str]] = {}
    for name in layers:
        if granularity == "block":
            match = _BLOCK.match(name)
            key = match.group(1) if match else name
        elif granularity == "type":
            key = name.rsplit(".", 1)[-1]
        else:
            key = name
        groups.setdefault(key, []).append(name)
    return groups


def uniform_layers(
    layers: Iterable[str],
    precision: str,
    excluded: Mapping[str, Collection[str]],
    precisions: Sequence[str],
) -> dict[str, str]:
    """Every layer at ``precision``, except a layer that cannot run it (``excluded``: layer ->
    the precisions of ``precisions`` it cannot run), which takes the nearest of its choices:
    the one with the fewest weight bits above ``precision``, else the most below.

    Raises:
        ConfigError: If a layer that cannot run ``precision`` has no choice left.

    Example:
        >>> uniform_layers(["a", "b"], "int4", {"b": ["int4"]}, ["int8", "int4", "int2"])
        {'a': 'int4', 'b': 'int8'}
    """
    out = {}
    for name in layers:
        refused = excluded.get(name, ())
        if precision == FLOAT or precision not in refused:
            out[name] = precision
            continue
        bits = weight_bits(precision)
        allowed = sorted((q for q in precisions if q not in refused), key=weight_bits)
        if not allowed:
            raise ConfigError(f"layer {name!r} can run none of the precisions {precisions}.")
        above = [q for q in allowed if weight_bits(q) > bits]
        out[name] = above[0] if above else allowed[-1]
    return out


@dataclass(frozen=True)
class BitPlan:
    """A per-layer weight precision assignment for one model.

    Attributes:
        model: The model the plan belongs to (a registered name, ``hf:PATH`` or a factory).
        dataset: The dataset it was scored on.
        layers: Layer module name -> precision. Layers absent from the mapping stay in float.
        backend: The quantization backend that applies it.

    Example:
        >>> plan = BitPlan(model="simplecnn", dataset="digits", layers={"fc2": "8", "fc1": "fp"})
        >>> plan.quantized_layers()
        {'fc2': 'int8'}
    """

    model: str
    dataset: str
    layers: Mapping[str, str] = field(default_factory=dict)
    backend: str = DEFAULT_BACKEND
    _quantized: dict[str, str] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        normalized = {
            str(name): normalize_precision(q, where=f"the precision of layer {name!r}")
            for name, q in sorted(self.layers.items())
        }
        object.__setattr__(self, "layers", MappingProxyType(normalized))
        # Read on every trial, several times: worked out once (not compared, not shown).
        quantized = {name: q for name, q in normalized.items() if q != FLOAT}
        object.__setattr__(self, "_quantized", quantized)

    @classmethod
    def uniform(
        cls, *, model: str, dataset: str, layers: Iterable[str], precision: str, backend: str
    ) -> BitPlan:
        """Return the plan that gives every layer the same precision."""
        return cls(
            model=model, dataset=dataset, layers=dict.fromkeys(layers, precision), backend=backend
        )

    def quantized_layers(self) -> dict[str, str]:
        """Return layer -> precision for the layers that are quantized (not ``float``)."""
        return self._quantized.copy()  # the dict's own copy: dict(proxy) goes key by key

    def layers_at(self) -> dict[str, list[str]]:
        """Return precision -> the quantized layers at it, in the plan's order."""
        at: dict[str, list[str]] = {}
        for name, precision in self._quantized.items():
            at.setdefault(precision, []).append(name)
        return at

    def validate_layers(self, available: Iterable[str]) -> None:
        """Check every layer of the plan exists among ``available`` quantizable layers.

        Raises:
            PlanError: Naming the first unknown layer with close matches.
        """
        # This runs on every trial: take a set as it is, and list the names only on error.
        known = available if isinstance(available, (set, frozenset)) else set(available)
        if self.layers.keys() <= known:
            return
        names = list(available) if isinstance(available, (list, tuple, Mapping)) else sorted(known)
        unknown = next(name for name in self.layers if name not in known)
        raise PlanError(
            f"plan layer {unknown!r} is not a quantizable layer of model {self.model!r}."
            + did_you_mean(unknown, names)
            + f" Quantizable layers: {', '.join(names)}."
        )

    def average_bits(self, weight_counts: Mapping[str, int], *, float_bits: int = 32) -> float:
        """Return the weight-count-weighted mean bits over ``weight_counts``' layers."""
        total = sum(weight_counts.values())
        if total == 0:
            return float(float_bits)
        bits = sum(
            count * weight_bits(self.layers.get(name, FLOAT), float_bits=float_bits)
            for name, count in weight_counts.items()
        )
        return bits / total

    def to_dict(self) -> dict[str, Any]:
        """Return the serialisable core of the plan (no metrics, no backend map)."""
        return {
            "schema_version": PLAN_SCHEMA_VERSION,
            "backend": self.backend,
            "model": self.model,
            "dataset": self.dataset,
            "layers": dict(self.layers),
        }

    @classmethod
    def from_dict(cls, data: object) -> BitPlan:
        """Build a plan from its serialised form (:meth:`to_dict`, or an exported record).

        Raises:
            PlanError: For another schema version, missing fields or unknown precisions.
        """
        if not isinstance(data, Mapping):
            raise PlanError(f"a plan must be a JSON object, but got {type(data).__name__}.")
        version = data.get("schema_version")
        if version != PLAN_SCHEMA_VERSION:
            earlier = isinstance(version, int) and version < PLAN_SCHEMA_VERSION
            raise PlanError(
                f"plan schema_version must be {PLAN_SCHEMA_VERSION}, but got {version!r}"
                + (
                    ": it was written by an earlier version of quide-search. Re-run its study "
                    "with this version and export it again."
                    if earlier
                    else ". Export the plan with this version of quide-search."
                )
            )
        for key in ("model", "dataset", "backend"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise PlanError(
                    f"plan field {key!r} must be a non-empty string, but got {data.get(key)!r}."
                )
        layers = data.get("layers")
        if not isinstance(layers, Mapping) or not all(isinstance(k, str) for k in layers):
            raise PlanError(
                f"plan field 'layers' must be an object {{layer: precision}}, but got {layers!r}."
            )
        return cls(
            model=data["model"], dataset=data["dataset"], layers=layers, backend=data["backend"]
        )
