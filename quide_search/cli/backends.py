"""``quide-search backends``."""

from __future__ import annotations

import argparse

from quide_search.cli._base import Command
from quide_search.cli._options import add_device_arg

__all__ = ["BackendsCommand"]


class BackendsCommand(Command):
    """List the quantization backends, their versions and the precisions each runs here."""

    name = "backends"
    epilog = """examples:
  quide-search backends
  quide-search backends --device cuda"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_device_arg(parser)

    def run(self, args: argparse.Namespace) -> int:
        from quide_search.backends import BACKENDS, get_backend
        from quide_search.measure.device import resolve_device

        device = resolve_device(args.device)
        head = f"backends on {device.type} (--backend NAME), each precision with its weight bits:"
        lines = [head]
        for name in BACKENDS:
            backend = get_backend(name)
            lines.append(f"  {name} {backend.version()}, quantizes {backend.layer_kinds()}:")
            offered = backend.precisions(device).items()
            lines.append("    " + ", ".join(f"{q} ({bits})" for q, bits in offered))
            lines += [f"    {q} {why}" for q, why in backend.refusals(device).items()]
        lines.append("layers of other types stay in float; a run says which (kept_float)")
        print("\n".join(lines))
        return 0
