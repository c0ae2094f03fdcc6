"""``quide-search dashboard``."""

from __future__ import annotations

import argparse

from quide_search.cli._base import Command
from quide_search.cli._options import add_study_args, study_storage
from quide_search.cli._types import port_number

__all__ = ["DashboardCommand"]


class DashboardCommand(Command):
    """Serve optuna-dashboard for a study's storage on 127.0.0.1 (Ctrl-C stops it)."""

    name = "dashboard"
    epilog = """examples:
  quide-search dashboard --study simplecnn-digits            # http://127.0.0.1:8080/
  quide-search dashboard --study x --storage postgresql://user@db-host/quide --port 9000"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_study_args(parser)
        parser.add_argument("--port", type=port_number, default=8080, help="(default: 8080)")
        parser.add_argument(
            "--allow-writes",
            action="store_true",
            help="let the dashboard change the storage (notes, deleting studies or trials); "
            "by default it only reads",
        )

    def run(self, args: argparse.Namespace) -> int:
        from quide_search.output.dashboard import serve_dashboard, study_url

        storage = study_storage(args)
        host = "127.0.0.1"
        url = study_url(study=args.study, storage=storage, host=host, port=args.port)
        print(f"serving optuna-dashboard for {storage}; study page: {url}", flush=True)
        try:
            serve_dashboard(
                storage=storage, host=host, port=args.port, allow_writes=args.allow_writes
            )
        except KeyboardInterrupt:
            return 0
        return 0
