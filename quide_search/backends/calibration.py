"""The inputs each layer of a float model receives on calibration data.

Static activation quantization needs, for each layer, a scale for its input activations,
fitted on what the layer sees on representative data. Here that is what the layer receives
inside the *float* model on the first samples of the calibration split, as the observers of
post-training quantization see it (PyTorch's ``prepare``/``convert``, TensorRT's calibrators).
The scale of a layer is then the same whatever the rest of the plan holds, so a calibrated
layer can be built once and reused by every plan (``measure.assembly``), and ``export`` and
``evaluate`` rebuild it bit for bit from the same samples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quide_search.errors import TrialEvaluationError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["CALIBRATION_SAMPLES", "LayerInputs"]

CALIBRATION_SAMPLES = 128
"""Calibration samples activation scales are fitted on: the first ones of the split."""

_BATCH = 32


class _Captured(BaseException):  # noqa: N818 - a signal, not an error
    """Raised by the capture hook: the layer's input is in hand, the rest of the pass is not
    needed (a BaseException, so model code that catches Exception lets it through)."""


class LayerInputs:
    """The positional inputs one layer of ``model`` receives on ``samples``, batch by batch.

    Args:
        model: The float model; never changed (a hook is added and removed around each pass).
        samples: Model inputs, samples along the first dimension (images (N, C, H, W),
            token windows (N, L)), already on the model's device.
        threads: torch threads the passes run with (None: the process's count); the inputs
            and hence the scales do not depend on what else runs.

    The last layer's inputs are kept, so the calibrations of one layer under several
    precisions share one set of passes.
    """

    def __init__(
        self, model: nn.Module, samples: torch.Tensor, *, threads: int | None = None
    ) -> None:
        self.model = model
        self.samples = samples
        self.threads = threads
        self._modules = dict(model.named_modules())
        self._last: tuple[str, list[tuple[Any, ...]]] | None = None

    def __len__(self) -> int:
        return int(self.samples.shape[0])

    def __call__(self, name: str) -> list[tuple[Any, ...]]:
        """Return layer ``name``'s positional inputs, one tuple per batch of 32 samples.

        Raises:
            KeyError: If the model has no module ``name``.
            TrialEvaluationError: If the forward pass fails, or never reaches the layer.
        """
        if self._last is not None and self._last[0] == name:
            return self._last[1]
        captured = self._capture(self._modules[name])
        if not captured or not captured[0]:
            raise TrialEvaluationError(
                f"layer {name!r} received no positional input on the calibration samples, so "
                "its activation scale cannot be fitted. Keep it weight-only or in float."
            )
        self._last = (name, captured)
        return captured

    def _capture(self, module: nn.Module) -> list[tuple[Any, ...]]:
        import torch

        from quide_search.latency import torch_threads

        found: list[tuple[Any, ...]] = []

        def hook(layer: nn.Module, args: tuple[Any, ...]) -> None:
            found.append(tuple(a.detach().clone() if torch.is_tensor(a) else a for a in args))
            raise _Captured

        handle = module.register_forward_pre_hook(hook)
        try:
            with torch.no_grad(), torch_threads(self.threads):
                for start in range(0, len(self), _BATCH):
                    try:
                        self.model(self.samples[start : start + _BATCH])
                    except _Captured:
                        continue
        except Exception as e:  # the model may raise anything, out-of-memory included
            raise TrialEvaluationError(
                f"the float model failed on the calibration samples: {type(e).__name__}: {e}"
            ) from e
        finally:
            handle.remove()
        return found
