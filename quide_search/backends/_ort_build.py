"""Build one plan's quantized ONNX model from a float graph exported once per model.

:class:`ExportedModel` holds what every plan of a study shares: the float graph, which node is
which layer, and the activation ranges calibrated once on the calibration samples (ORT's
calibration cache file, reused by every later plan). :meth:`ExportedModel.build` then
quantizes exactly the plan's layers:

1. ``w8a8`` layers: static QDQ (:func:`onnxruntime.quantization.quantize_static`) restricted to
   their nodes, uint8 activations, int8 per-channel weights, ``reduce_range`` as the settings say;
2. ``int8`` / ``int4`` layers: weight-only ``MatMulNBits`` (block-wise, symmetric,
   ``accuracy_level`` 4); a Linear exported as Gemm is first rewritten to MatMul + Add;
3. a session is opened, and ORT's optimised graph is read to see which operator runs each
   planned layer. A planned layer left without a low-bit operator fails the build.

Only :mod:`quide_search.backends.onnxruntime` uses this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quide_search.backends import _onnx_graph as graphs
from quide_search.backends._hf import is_causal_lm
from quide_search.backends._ort_session import export_causal_lm
from quide_search.errors import PlanError, TrialEvaluationError, first_line

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from quide_search.backends.onnxruntime import OrtSettings

__all__ = ["WEIGHT_ONLY_BITS", "ExportedModel", "OrtBuild", "block_size", "open_session",
           "quiet_ort"]  # fmt: skip

_CALIBRATION_BATCH = 32
WEIGHT_ONLY_BITS = {"int8": 8, "int4": 4}
"""The weight-only precisions ORT runs (MatMulNBits), with their bits."""


@dataclass(frozen=True)
class OrtBuild:
    """One plan quantized and opened in a session.

    Attributes:
        session: The ``onnxruntime.InferenceSession``.
        data: The quantized model, serialised (what is saved and exported).
        stored_bytes: The bytes of all its initializers (int4 packed two to a byte).
        layer_bytes: Layer -> the bytes of the initializers only that layer reads.
        ops: Layer -> the operators that compute it in ORT's optimised graph.
        optimized_nodes: Node name in ORT's optimised graph -> the layer it computes (what
            its profiler's events are named by: a session on ``data`` with the same options
            optimises it the same way).
    """

    session: Any
    data: bytes
    stored_bytes: int
    layer_bytes: dict[str, int]
    ops: dict[str, list[str]]
    optimized_nodes: dict[str, str]


class ExportedModel:
    """One float model exported to ONNX, with what every plan built on it shares.

    Args:
        model: The float model (CPU, eval mode); only read.
        layers: The quantizable layers (module paths).
        example: Model inputs (samples first): the graph is traced on the first, its batch
            dimension left free (a causal LM's tokens and KV cache too).
        settings: The kernel settings chosen for this CPU.

    Attributes:
        decoder: Whether the model is a transformers causal LM, exported as its KV-cache
            step (:mod:`~quide_search.backends._ort_session`); else the TorchScript graph of
            its forward.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[str],
        example: torch.Tensor,
        settings: OrtSettings,
    ) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="quide-ort-")
        self.folder = Path(self._folder.name)
        self.settings = settings
        self.float_path = self.folder / "float.onnx"
        self.decoder = is_causal_lm(model)
        if self.decoder:
            graph = export_causal_lm(model, example, self.float_path).graph
        else:
            graph = graphs.export_model(model, example[:1].cpu(), self.float_path).graph
        self.modules = frozenset(name for name, _ in model.named_modules() if name)
        self.layers = tuple(layers)
        self.nodes, self.unmapped = graphs.layer_nodes(graph, self.modules, layers)

    def build(
        self, wanted: Mapping[str, str], threads: int | None, calibration: torch.Tensor
    ) -> OrtBuild:
        """Quantize the ``wanted`` layers (layer -> precision) and open a session on the result.

        ``calibration`` (model inputs, samples first) are what w8a8 layers' activation ranges
        are calibrated on, once: the ranges are kept for every later plan on the same samples.

        Returns:
            The session, the quantized model's serialised bytes, what it stores, and each
            layer's operators in ORT's optimised graph.

        Raises:
            PlanError: If a wanted layer has no node, or its node cannot take the precision.
            TrialEvaluationError: If ORT fails to quantize the model or open the session.
        """
        import onnx

        self._check(wanted)
        static = [self.nodes[n].node for n, q in wanted.items() if q == "w8a8"]
        try:
            with quiet_ort():
                path = self._static(static, calibration) if static else self.float_path
                model = onnx.load(str(path))
                for precision, bits in WEIGHT_ONLY_BITS.items():
                    names = [n for n, q in wanted.items() if q == precision]
                    if names:
                        model = self._weight_only(model, names, bits)
                data = model.SerializeToString()
                optimized = self.folder / "optimized.onnx"
                session = open_session(data, threads, optimized=optimized)
                optimized_graph, optimized_nodes = self.optimized_layers(optimized)
                ops = graphs.layer_ops(optimized_graph, optimized_nodes)
        except (PlanError, TrialEvaluationError):
            raise
        except Exception as e:  # ORT's quantizers and sessions raise many types
            why = first_line(e, graphs.ORT_MESSAGE)
            raise TrialEvaluationError(
                f"onnxruntime could not build the plan: {type(e).__name__}: {why}"
            ) from e
        sizes = graphs.initializer_bytes(model.graph)
        node_layer = graphs.node_layers(model.graph, self.modules, self.nodes)
        per_layer = graphs.constant_layers(model.graph, node_layer, sizes)
        return OrtBuild(session, data, sum(sizes.values()), per_layer, ops, optimized_nodes)

    def optimized_layers(self, optimized: Path) -> tuple[Any, dict[str, str]]:
        """ORT's optimised graph written at ``optimized``, and node name -> layer in it."""
        import onnx

        graph = onnx.load(str(optimized)).graph
        return graph, graphs.node_layers(graph, self.modules, self.nodes)

    def _check(self, wanted: Mapping[str, str]) -> None:
        for name, precision in wanted.items():
            if name in self.unmapped:
                raise PlanError(
                    f"layer {name} cannot be quantized by the onnxruntime backend: "
                    f"{self.unmapped[name]}. Keep it in float."
                )
            node = self.nodes[name]
            if self.decoder and precision not in WEIGHT_ONLY_BITS:
                raise PlanError(
                    f"layer {name} of a causal LM runs int8 or int4 weight-only on the "
                    f"onnxruntime backend (its static {precision} is not built), but the plan "
                    f"gives it {precision}. Give it int8, int4 or float."
                )
            if precision in WEIGHT_ONLY_BITS and node.op == "Conv":
                raise PlanError(
                    f"layer {name} is a convolution, and ORT's weight-only {precision} "
                    "(MatMulNBits) runs matrix products only. Give it w8a8 or float."
                )

    def _static(self, nodes: list[str], calibration: torch.Tensor) -> Path:
        """The float graph with ``nodes`` in static QDQ int8 (ranges calibrated once per set
        of calibration samples, on every Conv, Gemm and MatMul, and kept in a file)."""
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        samples = calibration.detach().cpu().float().contiguous().numpy()
        digest = hashlib.sha256(samples.tobytes()).hexdigest()[:16]
        ranges = self.folder / f"ranges-{digest}.json"
        reader = None if ranges.is_file() else _Reader(samples)
        activations = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        out = self.folder / "static.onnx"
        quantize_static(
            str(self.float_path), str(out), reader, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(graphs.WEIGHT_OPS), per_channel=True,
            reduce_range=self.settings.reduce_range,
            activation_type=activations[self.settings.activations],
            weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
            calibration_cache_path=str(ranges),
        )  # fmt: skip
        return out

    def _weight_only(self, model: Any, layers: list[str], bits: int) -> Any:
        """``model`` with ``layers`` in block-wise weight-only MatMulNBits of ``bits``, each
        layer in blocks of :func:`block_size` of its input features."""
        for name in layers:
            if self.nodes[name].op == "Gemm":
                graphs.gemm_to_matmul(model, self.nodes[name].node)
        weights = {t.name: t for t in model.graph.initializer}
        blocks: dict[int, set[str]] = {}
        for node in model.graph.node:
            if node.op_type == "MatMul" and node.input[1] in weights:
                features = int(weights[node.input[1]].dims[0])  # MatMul's weight: (K, N)
                block = block_size(features, self.settings.block_size)
                blocks.setdefault(block, set()).add(node.name)
        wanted = {self.nodes[n].node for n in layers}
        for block, names in blocks.items():
            chosen = names & wanted
            if not chosen:
                continue
            others = [n.name for n in model.graph.node
                      if n.op_type == "MatMul" and n.name not in chosen]  # fmt: skip
            quantizer = _nbits_quantizer()(
                model, bits=bits, block_size=block, is_symmetric=self.settings.int4_symmetric,
                accuracy_level=self.settings.accuracy_level, nodes_to_exclude=others,
                op_types_to_quantize=("MatMul",),
            )  # fmt: skip
            quantizer.process()
            model = quantizer.model.model
        return model


def block_size(features: int, largest: int) -> int:
    """The weight-only block of a layer with ``features`` inputs: ``largest``, halved while it
    exceeds them, down to 16 (MatMulNBits takes powers of two from 16). A layer of 64 inputs
    takes blocks of 64, so its weight is not padded to twice its size."""
    block = largest
    while block > 16 and block > features:
        block //= 2
    return block


def _nbits_quantizer() -> Any:
    """ORT's MatMulNBitsQuantizer class. Its module calls ``logging.basicConfig(level=INFO)``
    on import, which would print every later INFO record of any library in the process: the
    root logger's handlers and level are put back as they were, and its own logger is quieted."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization import matmul_nbits_quantizer

    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger(matmul_nbits_quantizer.__name__).setLevel(logging.WARNING)
    return matmul_nbits_quantizer.MatMulNBitsQuantizer


class _Reader:
    """ORT's calibration data reader over the calibration samples, in fixed batches."""

    def __init__(self, samples: np.ndarray) -> None:
        self._batches = iter(
            {graphs.INPUT: samples[i : i + _CALIBRATION_BATCH]}
            for i in range(0, len(samples), _CALIBRATION_BATCH)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self._batches


def open_session(
    model: bytes | str, threads: int | None, *, optimized: Path | None = None,
    profile: Path | None = None,
) -> Any:  # fmt: skip
    """An ORT CPU session on ``model`` (bytes or a path), all graph optimisations on.

    Args:
        threads: Intra-op threads (None: ORT's default, one per core); inter-op is 1.
        optimized: Where ORT writes the graph it optimised (to read which kernels run).
        profile: A file prefix: profile every node of every run (a latency table's rows).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the NCHWc note on saving is not one
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    if profile is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def quiet_ort() -> Iterator[None]:
    """Silence ORT's quantizers, which log advice ("consider pre-processing") on the root
    logger at WARNING for every model."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
