"""``quide-search evaluate``."""

from __future__ import annotations

import argparse

from quide_search.cli._base import Command
from quide_search.cli._options import add_device_arg

__all__ = ["EvaluateCommand"]


class EvaluateCommand(Command):
    """Re-apply an exported plan to its model and measure it again (P must match exactly)."""

    name = "evaluate"
    epilog = """examples:
  quide-search evaluate --plan plan.json
  quide-search evaluate --plan plan.json --backend torchao   # the same plan on torchao"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--plan", type=str, required=True, help="an exported plan JSON file")
        parser.add_argument(
            "--model",
            type=str,
            default=None,
            help="expected model; an error if the plan is for another one",
        )
        parser.add_argument(
            "--dataset",
            type=str,
            default=None,
            help="expected dataset; an error if the plan is for another one",
        )
        parser.add_argument(
            "--data-dir", type=str, default=None, help="where the plan's dataset files live"
        )
        parser.add_argument(
            "--weights",
            type=str,
            default=None,
            help="the float state dict the plan's study used, if not the trained default",
        )
        parser.add_argument(
            "--text-file",
            type=str,
            default=None,
            help="for a causal LM: where the study's text file is now, if it moved",
        )
        from quide_search.backends import BACKENDS

        parser.add_argument(
            "--backend",
            type=str,
            choices=tuple(BACKENDS),
            default=None,
            help="apply the plan with this backend instead of the one that made it; its P is "
            "then not compared with the stored one (default: the plan's backend)",
        )
        add_device_arg(parser)

    def run(self, args: argparse.Namespace) -> int:
        from quide_search.output.replay import evaluate_plan
        from quide_search.output.text import format_replay

        replay = evaluate_plan(
            args.plan,
            device=args.device,
            model=args.model,
            dataset=args.dataset,
            data_dir=args.data_dir,
            weights=args.weights,
            text_file=args.text_file,
            backend=args.backend,
        )
        print(format_replay(replay))
        return 1 if replay.reproduced is False or replay.compression_differs else 0
