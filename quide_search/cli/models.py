"""``quide-search models`` and ``quide-search train``."""

from __future__ import annotations

import argparse

from quide_search.cli._base import Command
from quide_search.cli._options import add_device_arg
from quide_search.cli._types import positive_int

__all__ = ["ModelsCommand", "TrainCommand"]


class ModelsCommand(Command):
    """List the registered models, the datasets each serves, and what each needs."""

    name = "models"
    epilog = """examples:
  quide-search models"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        from quide_search.tasks.data import DATASET_NEEDS
        from quide_search.tasks.models import MODELS

        lines = ["registered models (--model NAME --dataset DATASET):"]
        for name in MODELS.names():
            spec = MODELS.get(name)
            lines.append(f"  {name}: {spec.description}")
            for dataset in spec.datasets:
                epochs = spec.epochs(dataset)
                weights = (
                    f"trained on first use, {epochs} epochs, cached"
                    if epochs
                    else ("pretrained, in the wheel" if spec.loader else "from --weights")
                )
                needs = DATASET_NEEDS.get(dataset, "nothing")
                lines.append(f"    --dataset {dataset}: needs {needs}; weights {weights}")
        lines += [
            "other forms of --model:",
            "  hf:PATH_OR_ID: a Hugging Face causal LM; needs --text-file (and the model files)",
            "  package.module:factory: your own model; the factory returns "
            "quide_search.CustomTask",
        ]
        print("\n".join(lines))
        return 0


class TrainCommand(Command):
    """Train a registered model's float weights (seeded) into the cache and print P."""

    name = "train"
    epilog = """examples:
  quide-search train --model simplecnn --dataset mnist-5k
  quide-search train --model simplecnn --dataset mnist --data-dir data --epochs 5"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", type=str, default="simplecnn", help="registered model")
        parser.add_argument("--dataset", type=str, default="digits", help="registered dataset")
        parser.add_argument(
            "--epochs",
            type=positive_int,
            default=None,
            help="training epochs (default: the model's own for the dataset; `run` uses that one)",
        )
        parser.add_argument("--data-dir", type=str, default=None, help="dataset files")
        parser.add_argument("--download", action="store_true", help="let torchvision download")
        add_device_arg(parser)

    def run(self, args: argparse.Namespace) -> int:
        import torch

        from quide_search.measure.evaluator import Evaluator
        from quide_search.tasks.models import MODELS
        from quide_search.tasks.resolver import load_task

        task = load_task(
            model=args.model,
            dataset=args.dataset,
            data_dir=args.data_dir,
            download=args.download,
            epochs=args.epochs,
            retrain=True,
        )
        accuracy = Evaluator.from_split(task.splits.eval, device=torch.device("cpu")).accuracy(
            task.model
        )
        default = MODELS.get(args.model).epochs(task.dataset_name)
        print(
            f"trained {task.model_name} on {task.dataset_name}: eval P = {accuracy:.4f} "
            f"({len(task.splits.eval)} samples); weights in {task.weights_path}"
        )
        if args.epochs not in (None, default):
            print(
                f"`run` trains with {default} epochs by default: pass "
                f"--weights {task.weights_path} to use these weights."
            )
        return 0
