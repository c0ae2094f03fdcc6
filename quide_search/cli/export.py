"""``quide-search export``."""

from __future__ import annotations

import argparse

from quide_search.cli._base import Command
from quide_search.cli._options import (
    add_budget_args,
    add_study_args,
    budget_from_args,
    study_storage,
)

__all__ = ["ExportCommand"]


class ExportCommand(Command):
    """Write a trial's plan (JSON or YAML), the Pareto front's plans, or a quantized checkpoint."""

    name = "export"
    epilog = """examples:
  quide-search export --study simplecnn-digits --out plan.json
  quide-search export --study simplecnn-digits --trial 7 --out plan7.json
  quide-search export --study simplecnn-digits --trial pareto --out front/ --format yaml
  quide-search export --study simplecnn-digits --checkpoint --out best-int/
  quide-search export --study resnet18-mnist-5k --format onnx --out resnet18-int8/
  quide-search export --study simplecnn-digits --max-size-mb 0.01 --out small.json"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_study_args(parser)
        parser.add_argument(
            "--trial",
            type=str,
            default="best",
            help="'best' (highest I' passing the gate), a trial number, or 'pareto' (one "
            "plan per front point in the directory --out, with index.json)",
        )
        parser.add_argument(
            "--out",
            type=str,
            required=True,
            help="plan file; a directory for --trial pareto or --checkpoint",
        )
        parser.add_argument(
            "--format",
            type=str,
            choices=("json", "yaml", "transformers", "onnx"),
            default=None,
            help="plan file format (default: yaml for an --out ending in .yaml or .yml, else "
            "json); transformers: for an hf: model, a folder "
            "--out that transformers' AutoModelForCausalLM.from_pretrained loads without "
            "quide-search (torchao plans without int4); onnx: for an onnxruntime study, a "
            "folder --out with the plan's quantized model.onnx, run with onnxruntime alone",
        )
        parser.add_argument(
            "--checkpoint",
            action="store_true",
            help="also write the quantized model in the backend's own files, and in plan.json "
            "a recipe that reloads it without quide-search; or reload with "
            "quide_search.load_quantized(model, DIR)",
        )
        parser.add_argument(
            "--model",
            type=str,
            default=None,
            help="the study's package.module:factory, for --checkpoint of a study made with "
            "one (a study never runs code the command line does not name)",
        )
        add_budget_args(parser, what="with --trial best: export")

    def run(self, args: argparse.Namespace) -> int:
        from quide_search.output.export import export_plan, plan_format

        path = export_plan(
            study=args.study,
            storage=study_storage(args),
            trial=args.trial,
            out=args.out,
            fmt=args.format or plan_format(args.out),
            checkpoint=args.checkpoint,
            model=args.model,
            budget=budget_from_args(args),
        )
        print(f"wrote {path}")
        return 0
