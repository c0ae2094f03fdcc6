"""``python -m quide_search`` runs the CLI."""

from __future__ import annotations

from quide_search.cli import console_main

if __name__ == "__main__":
    console_main()
