"""Serve optuna-dashboard on loopback for a study's storage.

quide-search writes everything the dashboard shows: per-layer parameters, the C, P, T, I and I'
user attributes, the accuracy-gate constraint, and the objective's name (``I_prime``) through
Optuna's metric names, so nothing here re-implements the dashboard.
"""

from __future__ import annotations

__all__ = ["serve_dashboard", "study_url"]


def study_url(*, study: str, storage: str, host: str, port: int) -> str:
    """Return the dashboard address of ``study``'s page."""
    from quide_search.study import load_study

    loaded = load_study(study=study, storage=storage)
    return f"http://{host}:{port}/dashboard/studies/{loaded._study_id}"


def serve_dashboard(*, storage: str, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run optuna-dashboard for ``storage`` until interrupted.

    Raises:
        ConfigError: If optuna-dashboard is not installed or the port cannot be bound.
    """
    from quide_search.errors import ConfigError
    from quide_search.storage import open_storage

    try:
        from optuna_dashboard import run_server
    except ImportError as e:
        raise ConfigError(
            "the dashboard needs optuna-dashboard, which is not installed. "
            "Run `pip install optuna-dashboard`."
        ) from e
    backend = open_storage(storage, must_exist=True)
    try:
        run_server(backend, host=host, port=port)
    except OSError as e:
        raise ConfigError(
            f"--port {port} cannot be used on {host} ({e.strerror or e}). Choose another --port."
        ) from e
