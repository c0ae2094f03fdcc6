"""Float twins of optimum-quanto layers that dequantize their weight on every call.

Where quanto has no kernel for a layer it dequantizes the weight on every call and runs the
float operation. Evaluation can run a module holding the weight dequantized once instead: the
same outputs, bit for bit, without the per-call work. Latency is always timed on quanto's own
modules, whose per-call dequantization is part of their real cost.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["dequantized_twin"]


class _DequantizedLinear(nn.Linear):
    """quanto's fallback for a Linear, with the weight dequantized once instead of per call.

    quanto's fallback runs ``matmul(x.reshape(-1, in), W.t())``, reshapes, then adds the bias
    (not ``F.linear``, whose fused add rounds differently); this does the same, so the output
    is bit for bit quanto's.
    """

    cast_input: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cast_input:  # quanto's int8/float8 matmul casts activations to the scale dtype
            x = x.to(self.weight.dtype)
        if x.dim() == 2:
            out = torch.mm(x, self.weight.t())
        else:
            shape = (*x.shape[:-1], self.out_features)
            out = torch.mm(x.reshape(-1, self.in_features), self.weight.t()).reshape(shape)
        # In place: the same additions, without allocating a second output.
        return out if self.bias is None else out.add_(self.bias)


def dequantized_twin(quantized: nn.Module) -> nn.Module | None:
    """Return a float module that computes what quanto's fallback computes for ``quantized``.

    The twin is returned only when it reproduces ``quantized`` bit for bit on a probe input;
    None for a layer type without a twin, or where quanto's arithmetic differs from the twin's.
    """
    with torch.no_grad():
        qweight: Any = quantized.qweight  # a quanto tensor
        weight = nn.Parameter(qweight.dequantize().detach().clone(), False)
        twin: nn.Module
        if isinstance(quantized, nn.Linear):
            twin = _DequantizedLinear(quantized.in_features, quantized.out_features, False, "meta")
            twin.cast_input = type(qweight).__name__ == "WeightQBytesTensor"
        elif isinstance(quantized, nn.Conv2d):
            # quanto's Conv2d fallback is F.conv2d on the dequantized weight.
            conv: Any = quantized  # torch types these as tuples of any length
            twin = nn.Conv2d(
                conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                conv.padding, conv.dilation, conv.groups, False, conv.padding_mode, device="meta",
            )  # fmt: skip
        else:
            return None
        twin.weight = weight
        twin.bias = quantized.bias
        probe = _probe(quantized, weight)
        return twin if torch.equal(twin(probe), quantized(probe)) else None


def _probe(layer: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """A small seeded input for ``layer`` (the global RNG is left alone)."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        dh, dw = layer.dilation
        shape: tuple[int, ...] = (2, layer.in_channels, dh * (kh - 1) + 4, dw * (kw - 1) + 4)
    else:
        shape = (3, weight.shape[1])
    probe = torch.randn(shape, generator=generator, dtype=torch.float32)
    return probe.to(device=weight.device, dtype=weight.dtype)
