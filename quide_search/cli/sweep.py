"""``quide-search sweep``."""

from __future__ import annotations

import argparse

from quide_search.cli._base import Command
from quide_search.cli._options import (
    add_activations_arg,
    add_gate_args,
    add_measure_args,
    add_task_args,
    config_from_args,
)
from quide_search.cli._types import study_name

__all__ = ["SweepCommand"]


class SweepCommand(Command):
    """Measure uniform precisions (float, int8, int4, ...) and name the knee (highest I')."""

    name = "sweep"
    epilog = """examples:
  quide-search sweep                                 # float, int8, int4, int2, fp8 on digits
  quide-search sweep --bits float,8,4 --out-dir results
  quide-search sweep --bits 8,4 --activations none,int8   # adds W8A8 and W4A8 rows"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_task_args(parser)
        parser.add_argument(
            "--bits",
            type=str,
            default=None,
            help="precisions to sweep; float is always measured as the baseline (default: "
            "float, fp8 and the int8, int4, int2 the backend runs on the device: "
            "float,8,4,2,f8 for quanto)",
        )
        add_activations_arg(parser)
        add_gate_args(parser)
        add_measure_args(parser)
        parser.add_argument(
            "--out-dir",
            type=str,
            default="studies",
            help="where the sweep JSON and CSV are written (default: studies)",
        )
        parser.add_argument(
            "--name",
            type=study_name,
            default=None,
            help="file name stem of the outputs (default: <model>-<dataset>)",
        )

    def run(self, args: argparse.Namespace) -> int:
        from quide_search.output.text import format_sweep
        from quide_search.study.sweep import run_sweep

        if args.bits is None:
            args.bits = _default_bits(args.backend, args.device, args.model)
        config = config_from_args(args, study=args.name)
        result = run_sweep(config)
        if result.exclusions:
            print(result.exclusions)
        print(format_sweep(result))
        return 0


def _default_bits(backend_name: str, device_name: str, model: str) -> str:
    """float, the backend's default weight-only bits on the device, and fp8 where it runs it."""
    from quide_search.backends import get_backend
    from quide_search.measure.device import resolve_device
    from quide_search.tasks.catalog import names_causal_lm

    backend = get_backend(backend_name)
    device = resolve_device(device_name)
    bits = ["float", *backend.default_bits(device, causal_lm=names_causal_lm(model))]
    bits += ["fp8"] if "fp8" in backend.precisions(device) else []
    return ",".join(dict.fromkeys(bits))
