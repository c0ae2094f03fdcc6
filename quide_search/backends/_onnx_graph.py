"""ONNX graphs of a torch model: export, which nodes are which layer, what a session runs.

The TorchScript exporter (``torch.onnx.export(dynamo=False)``) names each node by the module
scopes it was traced in: ``/layer2/layer2.0/downsample/downsample.0/Conv`` for the
convolution of ``layer2.0.downsample.0``. Each piece is a child's name, sometimes prefixed by
its parent's (``layer2.0``); :func:`layer_of` walks the torch model's module tree to recover
the dotted module path. Passes that rewrite the graph (ORT's quantizers, its optimiser) keep
the scope in the names of the nodes they make (``/conv1/Conv_token_32``), so a layer's nodes
are found in every form of the graph the same way.

Only :mod:`quide_search.backends.onnxruntime` uses this module; it imports onnx lazily.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quide_search.errors import ConfigError, first_line

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from torch import nn

__all__ = [
    "INPUT", "WRAPPER", "LOW_BIT_OPS", "OUTPUT", "LayerNode", "export_model", "gemm_to_matmul",
    "ORT_MESSAGE", "constant_layers", "initializer_bytes", "layer_nodes", "layer_of", "layer_ops",
    "node_layers", "profile_ms", "scope_layer",
]  # fmt: skip

INPUT, OUTPUT = "input", "output"
"""The input and output of a graph the TorchScript exporter writes (:func:`export_model`)."""
WRAPPER = "lm"
"""The attribute the dynamo-exported wrapper of a causal LM holds it in
(:mod:`~quide_search.backends._ort_session`): module paths in its graph start with ``lm.``."""
ORT_MESSAGE = 300
"""Characters of a library's error message an error of ours quotes."""
OPSET = 17
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
"""The ONNX operators a quantizable torch layer exports to (its weight's consumer)."""
LOW_BIT_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulNBits",
})  # fmt: skip
"""Operators of ORT's optimised graph that compute with integer weights (a real kernel)."""


@dataclass(frozen=True)
class LayerNode:
    """The node of the float graph that computes one torch layer.

    Attributes:
        node: The node's name (``/layer1/layer1.0/conv1/Conv``).
        op: Its operator: ``Conv``, ``Gemm`` or ``MatMul``.
        weight: The name of its weight initializer.
        constants: Every initializer it reads (the weight, a bias): rewritten graphs keep
            these names, or names made from them (``W_quantized``, ``B_Q4``), on the nodes
            that replace it, even where the node's own name changes.
    """

    node: str
    op: str
    weight: str
    constants: tuple[str, ...]


def export_model(model: nn.Module, example: torch.Tensor, path: Path) -> Any:
    """Write ``model`` as ONNX (opset 17, batch dimension dynamic) to ``path``; return the
    ``onnx.ModelProto`` written.

    Args:
        model: A float model in eval mode, on the CPU.
        example: One batch of inputs (samples first).

    Raises:
        ConfigError: If the exporter cannot express the model, naming the operator.
    """
    import torch

    batch = {0: "batch"}
    try:
        # The TorchScript exporter is deprecated in favour of dynamo's, which names nodes
        # without the module scopes layers are found by.
        with torch.no_grad(), warnings.catch_warnings(), _stdout_silenced():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=[INPUT],
                              output_names=[OUTPUT], opset_version=OPSET,
                              dynamic_axes={INPUT: batch, OUTPUT: batch})  # fmt: skip
    except Exception as e:  # the exporter raises many types, each naming the operator
        raise ConfigError(
            f"the onnxruntime backend needs a model torch.onnx.export can write, but it failed: "
            f"{first_line(e, ORT_MESSAGE)}. Use --backend quanto or torchao for this model."
        ) from e
    return _unshare_constants(path)


def _unshare_constants(path: Path) -> Any:
    """Give each node its own copy of a constant the exporter shares through Identity nodes,
    in the model at ``path``; return the model.

    Constant folding merges equal tensors (the folded biases of convolutions after batch
    norms that were never trained are all equal) into one initializer that other nodes read
    through ``Identity``. Quantizing one of those layers then quantizes the shared bias with
    that layer's scale, and ORT leaves the others unfused; each layer must own its constants.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    shared = [n for n in graph.node if n.op_type == "Identity" and n.input[0] in constants]
    for node in shared:
        array = numpy_helper.to_array(constants[node.input[0]]).copy()
        graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
        graph.node.remove(node)
    if shared:
        onnx.save(model, str(path))
    return model


@contextlib.contextmanager
def _stdout_silenced() -> Iterator[None]:
    """Silence file descriptor 1 (the exporter's C++ code dumps its whole IR graph there when
    it fails; the ConfigError says what failed)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def layer_of(node_name: str, modules: Container[str]) -> str | None:
    """The module path of the scope a node was traced in, or None if it is not a module's.

    ``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1``; ``/relu/Relu`` -> ``relu``;
    ``/Flatten`` -> None (the root's own operation).
    """
    pieces = node_name.strip("/").split("/")[:-1]
    path = ""
    for piece in pieces:
        parts = piece.split(".")
        # A piece is the module's full path (``layer1.0`` under ``layer1``), or its name under
        # ``path`` maybe with some of its ancestors' names before it (``downsample.0``): the
        # full path first, then the shortest name under ``path``.
        under = not path or piece.startswith(path + ".")
        names = (".".join(filter(None, (path, *parts[i:]))) for i in reversed(range(len(parts))))
        candidates = ([piece] if under else []) + list(names)
        found = next((c for c in candidates if c in modules), None)
        if found is None:
            return None
        path = found
    return path or None


_SCOPES = "pkg.torch.onnx.name_scopes"
"""The dynamo exporter's node metadata: the module paths the node was traced in, outermost
first, then the operation (``['', 'lm', 'lm.model', ..., 'lm.model.layers.0.mlp.up_proj',
'linear_5']``)."""


def scope_layer(node: Any, modules: Container[str]) -> str | None:
    """The module path of the innermost module ``node`` was traced in, or None: from the
    dynamo exporter's metadata (module paths under the wrapper's ``lm.``), else from the
    TorchScript exporter's node name (:func:`layer_of`)."""
    import ast

    scopes = next((p.value for p in node.metadata_props if p.key == _SCOPES), None)
    if scopes is None:
        return layer_of(node.name, modules)
    prefix = WRAPPER + "."
    paths = [p.removeprefix(prefix) for p in ast.literal_eval(scopes) if p.startswith(prefix)]
    return next((p for p in reversed(paths) if p in modules), None)


def layer_nodes(
    graph: Any, modules: Container[str], layers: Iterable[str]
) -> tuple[dict[str, LayerNode], dict[str, str]]:
    """Map each of ``layers`` to the node of the float ``graph`` that computes it.

    Returns:
        The mapped layers, and the others with why each could not be mapped (no node, or a
        module called more than once, whose calls share one weight).
    """
    initializers = {t.name for t in graph.initializer}
    found: dict[str, list[LayerNode]] = {}
    readers: dict[str, int] = {}  # weight -> how many nodes compute with it
    for node in graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        readers[node.input[1]] = readers.get(node.input[1], 0) + 1
        layer = scope_layer(node, modules)
        if layer is not None and node.input[1] in initializers:
            constants = tuple(name for name in node.input[1:] if name in initializers)
            found.setdefault(layer, []).append(
                LayerNode(node.name, node.op_type, node.input[1], constants)
            )
    mapped, unmapped = {}, {}
    for name in layers:
        nodes = found.get(name, [])
        # A second call of a module is traced under another scope name (``/shared_1/Gemm``)
        # but computes with the same weight: count the nodes reading it.
        calls = max(len(nodes), *(readers[n.weight] for n in nodes)) if nodes else 0
        if calls == 1:
            mapped[name] = nodes[0]
        else:
            unmapped[name] = (
                f"it is called {calls} times in the exported graph"
                if calls
                else "it has no Conv, Gemm or MatMul node with a constant weight in the exported "
                "graph"
            )
    return mapped, unmapped


def node_layers(
    graph: Any, modules: Container[str], nodes: Mapping[str, LayerNode]
) -> dict[str, str]:
    """Node name -> the layer it computes, for every node of ``graph`` (a rewritten or
    optimised form of the float graph) that belongs to one of ``nodes``' layers.

    A node belongs to the layer whose constants it reads (ORT renames a fused Conv + Relu
    after the Relu's output, but it still reads the Conv's bias), else to the layer its name's
    scope names (a quantized layer's DequantizeLinear).
    """
    owner = {name: layer for layer, node in nodes.items() for name in node.constants}
    found = {}
    for node in graph.node:
        layer = next((owner[key] for name in node.input for key in _stems(name) if key in owner),
                     None)  # fmt: skip
        if layer is None:
            scope = scope_layer(node, modules)
            layer = scope if scope in nodes else None
        if layer is not None:
            found[node.name] = layer
    return found


def constant_layers(
    graph: Any, node_layer: Mapping[str, str], sizes: Mapping[str, int]
) -> dict[str, int]:
    """Layer -> the bytes of the constants (of ``sizes``: name -> bytes) that only nodes of
    that layer read (:func:`node_layers`: a quantized weight's DequantizeLinear is named after
    the weight, not the layer's scope, but reads the weight's constants)."""
    readers: dict[str, set[str | None]] = {}
    for node in graph.node:
        for name in node.input:
            if name in sizes:
                readers.setdefault(name, set()).add(node_layer.get(node.name))
    per_layer: dict[str, int] = {}
    for name, owners in readers.items():
        owner = next(iter(owners)) if len(owners) == 1 else None
        if owner is not None:
            per_layer[owner] = per_layer.get(owner, 0) + sizes[name]
    return per_layer


def layer_ops(graph: Any, node_layer: Mapping[str, str]) -> dict[str, list[str]]:
    """Layer -> the operators of ``graph``'s nodes that compute it (:func:`node_layers`)."""
    ops: dict[str, list[str]] = {}
    for node in graph.node:
        if node.name in node_layer:
            ops.setdefault(node_layer[node.name], []).append(node.op_type)
    return ops


def _stems(name: str) -> list[str]:
    """``name`` and each prefix of it ending before an underscore (``W_quantized`` -> ``W``)."""
    return [name] + [name[:i] for i in range(len(name) - 1, 0, -1) if name[i] == "_"]


def gemm_to_matmul(model: Any, node_name: str) -> None:
    """Rewrite the Gemm ``node_name`` (``y = x @ W.T + b``, as a Linear exports on 2-D input)
    into MatMul and Add in place, with ``W.T`` stored: ORT's MatMulNBits quantizes MatMul
    only. The MatMul keeps the node's name, so it stays the layer's node.

    Raises:
        ValueError: If the node is not such a Gemm.
    """
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    index, node = next((i, n) for i, n in enumerate(graph.node) if n.name == node_name)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type != "Gemm" or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0:
        raise ValueError(f"{node_name} is not a Gemm x @ W.T + b")
    weights = {t.name: t for t in graph.initializer}
    weight = numpy_helper.to_array(weights[node.input[1]])
    if attrs.get("transB", 0):
        weight = weight.T
    transposed = numpy_helper.from_array(weight.copy(), f"{node.input[1]}_matmul")
    graph.initializer.append(transposed)
    product = f"{node.output[0]}_matmul"
    matmul = onnx.helper.make_node("MatMul", [node.input[0], transposed.name],
                                   [product if len(node.input) > 2 else node.output[0]],
                                   name=node.name)  # fmt: skip
    new = [matmul]
    if len(node.input) > 2:
        if attrs.get("beta", 1.0) != 1.0:
            raise ValueError(f"{node_name} scales its bias")
        new.append(onnx.helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                         name=f"{node.name}_bias"))  # fmt: skip
    del graph.node[index]
    for offset, made in enumerate(new):
        graph.node.insert(index + offset, made)


def initializer_bytes(graph: Any) -> dict[str, int]:
    """Initializer name -> the bytes it stores (int4 packed two to a byte)."""
    from onnx import TensorProto, helper

    packed = {TensorProto.INT4, TensorProto.UINT4}
    sizes = {}
    for tensor in graph.initializer:
        count = math.prod(tensor.dims)
        if tensor.data_type in packed:
            sizes[tensor.name] = -(-count // 2)
        else:
            sizes[tensor.name] = count * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return sizes


def profile_ms(
    events: Iterable[Mapping[str, Any]], node_layer: Mapping[str, str], runs: int
) -> dict[str, float]:
    """Per-layer kernel time from ORT's profile (a Chrome trace's events), in ms per run:
    the time of every node :func:`node_layers` gives the layer."""
    per_layer: dict[str, float] = {}
    suffix = "_kernel_time"
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith(suffix):
            continue
        layer = node_layer.get(name[: -len(suffix)])
        if layer is not None:
            per_layer[layer] = per_layer.get(layer, 0.0) + float(event["dur"]) / 1e3 / runs
    return per_layer
