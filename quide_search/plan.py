"""Bit-plans: which weight qtype each quantizable layer gets, keyed by module name.

A plan is the unit the search proposes, the trial applies and the export ships. Its serialised
form carries a ``quantization_map`` in exactly the shape ``optimum.quanto.requantize`` accepts,
so a deployed model needs nothing from quide-search to be rebuilt.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from quide_search.errors import ConfigError, PlanError, did_you_mean

__all__ = [
    "FLOAT",
    "PLAN_SCHEMA_VERSION",
    "QTYPES",
    "BitPlan",
    "atomic_write_text",
    "normalize_qtype",
    "parse_bits",
    "read_plan_file",
    "weight_bits",
]

PLAN_SCHEMA_VERSION = 1
FLOAT = "none"
"""The plan value of a layer kept in its float dtype (quanto's spelling)."""

QTYPES: Mapping[str, int] = MappingProxyType(
    {"qint8": 8, "qint4": 4, "qint2": 2, "qfloat8": 8, FLOAT: 0}
)
"""Allowed plan values and their weight bits (0 = the model's own float width)."""


def weight_bits(qtype: str, *, float_bits: int = 32) -> int:
    """Return the weight bits of a plan value, counting float as ``float_bits``."""
    return QTYPES[qtype] or float_bits


_BIT_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "8": "qint8", "int8": "qint8", "qint8": "qint8",
        "4": "qint4", "int4": "qint4", "qint4": "qint4",
        "2": "qint2", "int2": "qint2", "qint2": "qint2",
        "f8": "qfloat8", "fp8": "qfloat8", "float8": "qfloat8", "qfloat8": "qfloat8",
        "fp": FLOAT, "fp32": FLOAT, "float": FLOAT, "none": FLOAT,
    }
)  # fmt: skip


def normalize_qtype(value: object, *, where: str = "qtype") -> str:
    """Return the canonical plan value for a qtype given as a name, an alias or a quanto qtype.

    Raises:
        PlanError: For an unknown name, listing the allowed ones.
    """
    name = getattr(value, "name", value)
    if not isinstance(name, str):
        raise PlanError(f"{where} must be a string, but got {value!r}. Allowed: {_allowed()}.")
    key = name.strip().lower()
    if key == "qfloat8_e4m3fn":  # quanto's own name for qfloat8
        return "qfloat8"
    if key not in _BIT_ALIASES:
        raise PlanError(
            f"{where} must be one of {_allowed()}, but got {name!r}."
            + did_you_mean(key, _BIT_ALIASES)
        )
    return _BIT_ALIASES[key]


def _allowed() -> str:
    return ", ".join(QTYPES)


def parse_bits(text: str) -> tuple[str, ...]:
    """Parse a ``--bits`` list such as ``"8,4,2"`` or ``"fp32,8,4,2,f8"`` into plan values.

    Raises:
        ConfigError: For an empty list, a duplicate or a value outside the supported set.
    """
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"--bits must list at least one precision, but got bits={text!r}.")
    unknown = [t for t in items if t.lower() not in _BIT_ALIASES]
    if unknown:
        raise ConfigError(
            "--bits must be a subset of {fp32, 8, 4, 2, f8}, but got "
            f"bits={text!r} (unknown: {', '.join(unknown)}). "
            "Supported qtypes: qint8, qint4, qint2, qfloat8, and fp32/none for float."
        )
    values = tuple(_BIT_ALIASES[t.lower()] for t in items)
    if len(set(values)) != len(values):
        raise ConfigError(f"--bits must not repeat a precision, but got bits={text!r}.")
    return values


@dataclass(frozen=True)
class BitPlan:
    """A per-layer weight precision assignment for one model.

    Attributes:
        model: Registered model name the plan belongs to.
        dataset: Dataset name the plan was scored on.
        layers: Layer module name -> plan value (``qint8``, ``qint4``, ``qint2``, ``qfloat8`` or
            ``none``). Layers absent from the mapping stay in float.

    Example:
        >>> plan = BitPlan(model="simplecnn", dataset="digits", layers={"fc2": "8", "fc1": "fp"})
        >>> plan.quantization_map()
        {'fc2': {'weights': 'qint8', 'activations': 'none'}}
    """

    model: str
    dataset: str
    layers: Mapping[str, str] = field(default_factory=dict)
    _quantized: dict[str, str] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        normalized = {
            str(name): normalize_qtype(q, where=f"the qtype of layer {name!r}")
            for name, q in sorted(self.layers.items())
        }
        object.__setattr__(self, "layers", MappingProxyType(normalized))
        # Read on every trial, several times: worked out once (not compared, not shown).
        quantized = {name: q for name, q in normalized.items() if q != FLOAT}
        object.__setattr__(self, "_quantized", quantized)

    @classmethod
    def uniform(cls, *, model: str, dataset: str, layers: Iterable[str], qtype: str) -> BitPlan:
        """Return the plan that gives every layer the same qtype."""
        return cls(model=model, dataset=dataset, layers={name: qtype for name in layers})

    @classmethod
    def mixed(
        cls, *, model: str, dataset: str, layers: Iterable[str], qtypes: Sequence[str]
    ) -> BitPlan:
        """Return the plan that deals ``qtypes`` out over ``layers`` in turn, in model order.

        A fixed plan that looks like the plans a search over ``qtypes`` tries: measured T on
        a CPU is paired with it (see :mod:`quide_search.latency`).

        Raises:
            ConfigError: If ``qtypes`` is empty.
        """
        if not qtypes:
            raise ConfigError("a mixed plan needs at least one qtype, but got none.")
        dealt = {name: qtypes[i % len(qtypes)] for i, name in enumerate(layers)}
        return cls(model=model, dataset=dataset, layers=dealt)

    def quantized_layers(self) -> dict[str, str]:
        """Return layer -> qtype for the layers that are quantized (not ``none``)."""
        return self._quantized.copy()  # the dict's own copy: dict(proxy) goes key by key

    def quantization_map(self) -> dict[str, dict[str, str]]:
        """Return the plan as ``optimum.quanto.requantize`` expects its quantization_map."""
        return {
            name: {"weights": q, "activations": "none"}
            for name, q in self.quantized_layers().items()
        }

    def validate_layers(self, available: Iterable[str]) -> None:
        """Check every layer of the plan exists among ``available`` quantizable layers.

        Raises:
            PlanError: Naming the first unknown layer with close matches.
        """
        # This runs on every trial: take a set as it is, and list the names only on error.
        known = available if isinstance(available, (set, frozenset)) else set(available)
        if self.layers.keys() <= known:
            return
        for name in self.layers:
            if name not in known:
                ordered = isinstance(available, (list, tuple, Mapping))
                names = list(available) if ordered else sorted(known)
                raise PlanError(
                    f"plan layer {name!r} is not a quantizable layer of model "
                    f"{self.model!r}."
                    + did_you_mean(name, names)
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
        """Return the serialisable core of the plan (no metrics)."""
        return {
            "schema_version": PLAN_SCHEMA_VERSION,
            "model": self.model,
            "dataset": self.dataset,
            "layers": dict(self.layers),
            "quantization_map": self.quantization_map(),
        }

    @classmethod
    def from_dict(cls, data: object) -> BitPlan:
        """Build a plan from its serialised form, checking every field.

        Raises:
            PlanError: For a wrong schema version, missing fields or unknown qtypes.
        """
        if not isinstance(data, Mapping):
            raise PlanError(f"a plan must be a JSON object, but got {type(data).__name__}.")
        version = data.get("schema_version")
        if version != PLAN_SCHEMA_VERSION:
            raise PlanError(
                f"plan schema_version must be {PLAN_SCHEMA_VERSION}, but got {version!r}. "
                "Re-export the plan with this version of quide-search."
            )
        for key in ("model", "dataset"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise PlanError(
                    f"plan field {key!r} must be a non-empty string, but got {data.get(key)!r}."
                )
        layers = _layers_from_map(data.get("quantization_map"))
        stated = data.get("layers")
        if stated is not None:
            if not isinstance(stated, Mapping):
                raise PlanError(f"plan field 'layers' must be an object, but got {stated!r}.")
            full = cls(model=data["model"], dataset=data["dataset"], layers=stated)
            if full.quantized_layers() != layers:
                raise PlanError(
                    "plan fields 'layers' and 'quantization_map' disagree; "
                    "edit one of them so both name the same qtype per layer."
                )
            return full
        return cls(model=data["model"], dataset=data["dataset"], layers=layers)


def _layers_from_map(qmap: object) -> dict[str, str]:
    if not isinstance(qmap, Mapping):
        raise PlanError(
            "plan field 'quantization_map' must be an object {layer: {'weights': qtype, "
            f"'activations': 'none'}}, but got {qmap!r}."
        )
    layers: dict[str, str] = {}
    for name, entry in qmap.items():
        if not isinstance(entry, Mapping) or "weights" not in entry:
            raise PlanError(
                f"quantization_map[{name!r}] must be an object with a 'weights' key, "
                f"but got {entry!r}."
            )
        if entry.get("activations", "none") != "none":
            raise PlanError(
                f"quantization_map[{name!r}]['activations'] must be 'none' (activation "
                f"quantization is not supported yet), but got {entry.get('activations')!r}."
            )
        qtype = normalize_qtype(entry["weights"], where=f"quantization_map[{name!r}]['weights']")
        if qtype != FLOAT:
            layers[str(name)] = qtype
    return layers


def read_plan_file(path: str | os.PathLike[str]) -> tuple[BitPlan, dict[str, Any]]:
    """Read a plan file (JSON, or YAML by its suffix); return the plan and the whole record.

    Raises:
        PlanError: If the file is missing, not JSON, or not a valid plan.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise PlanError(
            f"plan file {str(p)!r} does not exist. Export one with "
            "`quide-search export --study NAME --out plan.json`."
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise PlanError(f"plan file {str(p)!r} cannot be read as UTF-8 text: {e}.") from e
    if p.suffix.lower() in (".yaml", ".yml"):
        data = _parse_yaml(text, p)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanError(
                f"plan file {str(p)!r} is not valid JSON ({e.msg} at line {e.lineno} "
                f"column {e.colno})."
            ) from e
    plan = BitPlan.from_dict(data)
    return plan, data


def _parse_yaml(text: str, path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        reason = " ".join(str(e).split())
        raise PlanError(f"plan file {str(path)!r} is not valid YAML ({reason}).") from e


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename.

    An interrupted write leaves either the old file or the new one, never half of one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
