"""The pieces every subcommand shares: the base class and a parser that errors in one line."""

from __future__ import annotations

import abc
import argparse
from typing import NoReturn

__all__ = ["Command", "QuideArgumentParser", "UsageError"]


class UsageError(Exception):
    """A command-line usage error, reported as one line with exit code 2."""

    def __init__(self, message: str, prog: str) -> None:
        super().__init__(message)
        self.prog = prog


class QuideArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise instead of printing usage and exiting.

    ``main`` turns them into a single line naming the subcommand's help, like every other error.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog)


class Command(abc.ABC):
    """One subcommand. Its docstring's first line is its help text."""

    name: str = ""
    epilog: str = ""

    @abc.abstractmethod
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the subcommand's arguments (each with a ``type=``)."""

    @abc.abstractmethod
    def run(self, args: argparse.Namespace) -> int:
        """Run the command and return its exit code; heavy imports happen here."""
