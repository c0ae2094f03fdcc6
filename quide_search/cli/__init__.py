"""The ``quide-search`` command line: a thin argparse layer over the library.

Subcommands live in one module each and are listed in ``_COMMANDS``; their help is their class
docstring. Heavy libraries load inside ``Command.run`` so ``--help`` is instant. Every
``QuideError`` is caught here, once, and printed as one line with exit code 2 (``--debug``
shows the traceback instead).

Layer: cli (the top: imports any layer; nothing imports it but ``__main__``).
"""

from __future__ import annotations

import argparse
import inspect
import logging
import signal
import sys
from collections.abc import Sequence

from quide_search.cli._base import Command, QuideArgumentParser, UsageError
from quide_search.cli.backends import BackendsCommand
from quide_search.cli.dashboard import DashboardCommand
from quide_search.cli.evaluate import EvaluateCommand
from quide_search.cli.export import ExportCommand
from quide_search.cli.models import ModelsCommand, TrainCommand
from quide_search.cli.report import ReportCommand
from quide_search.cli.run import RunCommand
from quide_search.cli.sensitivity import SensitivityCommand
from quide_search.cli.studies import ShowCommand, StudiesCommand
from quide_search.cli.sweep import SweepCommand

__all__ = ["build_parser", "console_main", "main"]

_COMMANDS: tuple[type[Command], ...] = (
    RunCommand,
    SweepCommand,
    SensitivityCommand,
    StudiesCommand,
    ShowCommand,
    ReportCommand,
    DashboardCommand,
    ExportCommand,
    EvaluateCommand,
    ModelsCommand,
    BackendsCommand,
    TrainCommand,
)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """Return the top-level parser and the parser of each subcommand."""
    from quide_search._version import __version__

    parser = QuideArgumentParser(
        prog="quide-search",
        description="Find the mixed-precision quantization plan that maximises the QuIDE "
        "Intelligence Index I' = C*P/log2(T+1), gated on accuracy.",
    )
    parser.add_argument("--version", action="version", version=f"quide-search {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=QuideArgumentParser
    )
    subs: dict[str, argparse.ArgumentParser] = {}
    for command_type in _COMMANDS:
        command = command_type()
        doc = inspect.getdoc(command_type) or ""
        sub = subparsers.add_parser(
            command.name,
            help=doc.splitlines()[0],
            description=doc,
            epilog=command.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show tracebacks of errors",
        )
        command.add_arguments(sub)
        sub.set_defaults(_command=command)
        subs[command.name] = sub
    return parser, subs


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    from quide_search.errors import QuideError

    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (
        args_list[0].startswith("-") and args_list[0] not in ("-h", "--help", "--version")
    ):
        # With no subcommand, `run` is meant: `quide-search` alone runs the embedded default.
        args_list = ["run", *args_list]
    parser, _ = build_parser()
    debug = "--debug" in args_list
    try:
        args = parser.parse_args(args_list)
        from quide_search.progress import shown

        # Long phases draw bars on a terminal (`run` decides with --no-progress itself).
        with shown(sys.stderr.isatty()):
            return int(args._command.run(args))
    except UsageError as e:
        print(f"{e.prog}: error: {e} (see '{e.prog} --help')", file=sys.stderr)
        return 2
    except QuideError as e:
        if debug:
            raise
        # One line, whatever a library put into the message.
        message = " ".join(str(e).split())
        print(f"quide-search {args_list[0]}: error: {message}", file=sys.stderr)
        return 2
    except Exception as e:
        full = _full_device(e)
        if full is None or debug:
            raise
        print(f"quide-search {args_list[0]}: error: {full}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        if debug:
            raise
        signum = int(getattr(e, "signum", signal.SIGINT))
        print(
            f"quide-search: stopped by {signal.Signals(signum).name}; completed trials are "
            "kept in the study.",
            file=sys.stderr,
        )
        return 128 + signum


def _full_device(error: BaseException) -> str | None:
    """One line for an error that the machine, not the tool, caused, else None.

    By kind, whichever library raised it: a full disk or quota (SQLite's "database or disk
    is full", an ``OSError`` with ENOSPC, safetensors' own ``SafetensorError`` naming
    ``StorageFull``, Optuna's error raised while recording the failure: looked for along the
    whole chain of causes, since committed trials are kept and a trial left RUNNING is failed
    by the next run's heartbeat check); a path that cannot be opened or created (EACCES,
    EPERM, EROFS, ENOENT, ENOTDIR with a file name; safetensors' ``PermissionDenied``):
    only the error itself or its direct cause, so that a fault raised while handling another
    is not mistaken for one (``--debug`` shows the traceback).
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        full = _full_line(current)
        if full is not None:
            return full + " Completed trials are kept; free space and run the same command again."
        current = current.__cause__ or current.__context__
    for near in (error, error.__cause__):
        line = _path_line(near) if near is not None else None
        if line is not None:
            return line
    return None


def _full_line(error: BaseException) -> str | None:
    import errno

    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" ({error.filename})" if error.filename else ""
        return f"the disk is full{where}: {error.strerror}."
    text = str(error)
    if "database or disk is full" in text:
        return "the disk holding the study database is full."
    if "StorageFull" in text or "No space left on device" in text:
        return "the disk is full: No space left on device."
    return None


def _path_line(error: BaseException) -> str | None:
    import errno

    if isinstance(error, OSError) and error.filename:
        name = repr(str(error.filename))
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return (
                f"{name} cannot be opened or created: {error.strerror}. Choose a path you can "
                "read and write, or change its permissions (--debug shows where)."
            )
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            return (
                f"{name} cannot be opened or created: {error.strerror}. Check that each "
                "folder on the way exists and is a folder (--debug shows where)."
            )
    if "PermissionDenied" in str(error):
        return (
            "a file cannot be opened or created: permission denied. Choose a path you can "
            "read and write, or change its permissions (--debug shows where)."
        )
    return None


def console_main() -> None:
    """Entry point of the ``quide-search`` console script.

    SIGTERM (what service managers, schedulers and CI runners send) stops the process as
    Ctrl-C does, so what is running is recorded; the exit code is 143.
    """
    signal.signal(signal.SIGTERM, _terminate)
    # transformers imports torchao when it is installed, and torch then warns about torchao's
    # enum registrations on every run: chatter about two libraries, nothing about the run.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    sys.exit(main())


def _terminate(signum: int, frame: object) -> None:
    from quide_search.errors import Stopped

    raise Stopped(signum)
