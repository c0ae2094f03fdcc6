"""ORT sessions run like torch models (:class:`OrtModel`), and causal LMs as one graph with a
KV cache, for scoring and for decoding.

A transformers causal LM is exported (``torch.onnx.export(dynamo=True)``: the TorchScript
exporter cannot trace transformers' caches) as one step of the model over its KV cache:

- inputs: ``input_ids`` (N, S) int64; ``attention_mask`` (N, P + S) int64, all ones;
  ``past`` (2·L, N, H, P, D) float32: the keys and values of the L blocks (key of block i at
  2·i, its value at 2·i + 1) for the P tokens so far, H key-value heads of D features;
- outputs: ``logits`` (N, S, V) float32; ``present`` (2·L, N, H, P + S, D).

With P = 0 it is the model's plain forward, which P is scored with (whole windows). Greedy
decoding (:func:`greedy`, T) runs the prompt with P = 0, then one token a step, the present fed
back as the past: what ``generate(use_cache=True)`` does in torch. The dynamo exporter names
nodes by operator (``node_linear_3``) and keeps the module path of each in the node's metadata
(``pkg.torch.onnx.name_scopes``), which :func:`~._onnx_graph.scope_layer` reads.

Only the onnxruntime backend uses this module; it imports transformers and onnx lazily.
"""

from __future__ import annotations

import io
import warnings
from contextlib import redirect_stdout
from typing import TYPE_CHECKING, Any

from torch import nn

from quide_search.backends._onnx_graph import INPUT
from quide_search.errors import ConfigError, PlanError, first_line

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    import numpy as np
    import torch

    from quide_search.backends._ort_build import ExportedModel

__all__ = ["IDS", "MASK", "PAST", "OrtModel", "export_causal_lm", "greedy",
           "is_decoder", "logits"]  # fmt: skip

IDS, MASK, PAST = "input_ids", "attention_mask", "past"
_OPSET = 18  # the dynamo exporter's lowest


class OrtModel(nn.Module):
    """A quantized ONNX model run by an ORT session, called like the torch model it came from.

    Args:
        session: The ``onnxruntime.InferenceSession``.
        data: The model's serialised bytes (what :meth:`OnnxRuntimeBackend.save` writes).
        threads: The session's intra-op threads (None: ORT's default).
        exported: The float graph it was built from, which tells which node is which layer
            (None for a model loaded from a file).
        optimized_nodes: Node name in ORT's optimised graph of ``data`` -> its layer (None
            for a model loaded from a file): what its profiler's events are named by.
    """

    def __init__(
        self,
        session: Any,
        data: bytes,
        threads: int | None,
        exported: ExportedModel | None,
        optimized_nodes: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.session = session
        self.data = data
        self.threads = threads
        self.exported = exported
        self.optimized_nodes = optimized_nodes
        self.decoder = is_decoder(session)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) float inputs -> the model's (N, ...) float outputs, on the CPU; for a causal
        LM, (N, S) token ids -> (N, S, V) logits."""
        import torch

        if self.decoder:
            return torch.from_numpy(logits(self.session, x.cpu().numpy()))
        array = x.detach().to("cpu", torch.float32).numpy()
        return torch.from_numpy(self.session.run(None, {INPUT: array})[0])

    def generate(
        self,
        prompt: torch.Tensor,
        *,
        max_new_tokens: int,
        attention_mask: torch.Tensor | None = None,
        do_sample: bool = False,
        num_beams: int = 1,
        **_: Any,
    ) -> torch.Tensor:
        """Greedy decoding with the KV cache, timed as transformers' ``generate`` of a causal
        LM with ``min_new_tokens = max_new_tokens``: (N, P) prompt ids -> (N, P +
        max_new_tokens) ids, never stopping early. Unlike transformers, the end-of-sequence
        token is not masked until the minimum: the tokens can differ, the work per token not.
        Other keyword arguments (``pad_token_id``, ``use_cache``, ...) are ignored.

        Raises:
            PlanError: For a model that is not a causal LM, or for sampling, beam search or an
                attention mask with padding (none is built here).
        """
        import torch

        asked = (
            "a model that is not a causal LM" if not self.decoder
            else "sampling" if do_sample
            else f"{num_beams} beams" if num_beams != 1
            else "a padded attention mask" if attention_mask is not None
            and not bool(attention_mask.all())
            else None
        )  # fmt: skip
        if asked is not None:
            raise PlanError(
                f"an ORT model decodes a causal LM greedily, one unpadded prompt per row, but "
                f"was given {asked}. Call generate(prompt, max_new_tokens=N) on its model."
            )
        ids = greedy(self.session, prompt.cpu().numpy(), max_new_tokens)
        return torch.from_numpy(ids)


class _CacheStep(nn.Module):
    """The model's forward over a KV cache passed as one tensor (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.lm = model  # the graph's module paths start with this name (_onnx_graph.WRAPPER)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, past: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch
        from transformers import DynamicCache

        cache = DynamicCache()
        for block in range(past.shape[0] // 2):
            cache.update(past[2 * block], past[2 * block + 1], block)
        given = {_cache_argument(self.lm): cache}
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, **given)
        return out.logits, torch.stack([t for pair in _key_values(out) for t in pair])


def _cache_argument(model: nn.Module) -> str:
    """The keyword ``model``'s forward takes its KV cache by: ``cache`` from transformers 5.2x
    (``past_key_values`` still works there, with a deprecation warning), else the old name."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _key_values(out: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each block's (keys, values), each (N, H, P, D), from a forward's output cache."""
    cache = out.get("cache")
    if cache is None:
        cache = out.past_key_values  # before the rename
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))  # before 4.56


def export_causal_lm(model: nn.Module, ids: torch.Tensor, path: Path) -> Any:
    """Write the cache step of the causal LM ``model`` (float32, eval mode, CPU) to ``path``;
    return the ``onnx.ModelProto`` written.

    Args:
        ids: Token ids (N, S), samples first: the trace runs on two copies of up to 8 tokens
            of the first row (at least 2), with a past of 4 tokens; batch, tokens and past
            stay free in the graph.

    Raises:
        ConfigError: If the model is not float32, or the exporter cannot express it (with
            its first line).
    """
    import onnx
    import torch

    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:
        raise ConfigError(
            f"the onnxruntime backend exports float32 causal LMs, but this one is {dtype}. "
            "Use --dtype float32 (or auto on a CPU)."
        )
    row = ids[:1, :8].cpu()
    # Sizes 0 and 1 would be fixed by the trace: 2 samples, 2 tokens or more.
    example = row.repeat(2, 2 if row.shape[1] < 2 else 1)
    try:
        inputs, shapes = _trace_inputs(model, example)
        with torch.no_grad(), warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(_CacheStep(model), inputs, str(path), dynamo=True,
                              dynamic_shapes=shapes, opset_version=_OPSET,
                              input_names=[IDS, MASK, PAST], output_names=["logits", "present"],
                              verbose=False)  # fmt: skip
    except Exception as e:  # the model and the exporter raise many types, each saying what
        raise ConfigError(
            f"the onnxruntime backend needs a causal LM torch.onnx.export(dynamo=True) can "
            f"write with its KV cache, but it failed: {type(e).__name__}: "
            f"{first_line(e, 300)}. Use --backend quanto or torchao for this model."
        ) from e
    return onnx.load(str(path))


def _trace_inputs(
    model: nn.Module, example: torch.Tensor
) -> tuple[tuple[torch.Tensor, ...], dict[str, Any]]:
    """The cache step's inputs for ``example`` ids (2, S) with a past of 4 tokens, shaped as
    the model's own cache, and their dimensions the graph leaves free."""
    import torch

    with torch.no_grad():
        cache = _key_values(model(input_ids=example[:, :2], use_cache=True))
    blocks, (_, heads, _, features) = len(cache), cache[0][0].shape
    past = torch.zeros(2 * blocks, 2, heads, 4, features)
    mask = torch.ones(2, 4 + example.shape[1], dtype=torch.long)
    dim = torch.export.Dim
    batch = dim("batch")
    shapes = {"input_ids": {0: batch, 1: dim("tokens")},
              "attention_mask": {0: batch, 1: dim("seen")},
              "past": {1: batch, 3: dim("past")}}  # fmt: skip
    return (example, mask, past), shapes


def is_decoder(session: Any) -> bool:
    """Whether the ORT ``session`` runs a causal LM's cache step (it takes a ``past``)."""
    return any(i.name == PAST for i in session.get_inputs())


def _prompt_feed(session: Any, ids: np.ndarray) -> dict[str, np.ndarray]:
    """The cache step's inputs for token ids (N, S) with no past: the ids as int64, a mask of
    ones, and a past of no tokens, (2·L, N, H, 0, D)."""
    import numpy as np

    ids = np.asarray(ids, np.int64)
    shape = next(i.shape for i in session.get_inputs() if i.name == PAST)
    empty = np.zeros((shape[0], len(ids), shape[2], 0, shape[4]), np.float32)
    return {IDS: ids, MASK: np.ones_like(ids), PAST: empty}


def logits(session: Any, ids: np.ndarray) -> np.ndarray:
    """The logits (N, S, V) of token ids (N, S), with no past: the model's plain forward."""
    return session.run(None, _prompt_feed(session, ids))[0]


def greedy(session: Any, prompt: np.ndarray, new_tokens: int) -> np.ndarray:
    """Greedy decoding with the KV cache: ``prompt`` (N, P) token ids -> (N, P + new_tokens),
    the prompt and the ``new_tokens`` most likely tokens one after another (no early stop).
    Runs the session ``new_tokens`` times: the prompt, then one step per further token."""
    import numpy as np

    feed = _prompt_feed(session, prompt)
    tokens = feed[IDS]
    for step in range(new_tokens):
        out, present = session.run(None, feed)
        chosen = out[:, -1].argmax(-1).astype(np.int64)[:, None]
        tokens = np.concatenate([tokens, chosen], axis=1)
        if step + 1 < new_tokens:
            feed = {IDS: chosen, MASK: np.ones_like(tokens), PAST: present}
    return tokens
