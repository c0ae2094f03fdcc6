"""Serve optuna-dashboard on loopback for a study's storage.

quide-search writes everything the dashboard shows: per-layer parameters, the C, P, T, I and I'
user attributes, the accuracy-gate constraint, and the objective's name (``I_prime``) through
Optuna's metric names, so nothing here re-implements the dashboard.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wsgiref.types import WSGIApplication

__all__ = ["serve_dashboard", "study_url"]


def study_url(*, study: str, storage: str, host: str, port: int) -> str:
    """Return the dashboard address of ``study``'s page."""
    from quide_search.study import load_study

    loaded = load_study(study=study, storage=storage)
    return f"http://{host}:{port}/dashboard/studies/{loaded._study_id}"


def serve_dashboard(*, storage: str, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run optuna-dashboard for ``storage`` until interrupted (Ctrl-C, SIGINT).

    Raises:
        ConfigError: If optuna-dashboard is not installed or the port cannot be bound.
    """
    from quide_search.errors import ConfigError
    from quide_search.storage import open_storage

    try:
        from optuna_dashboard import wsgi
    except ImportError as e:
        raise ConfigError(
            "the dashboard needs optuna-dashboard, which is not installed. "
            "Run `pip install optuna-dashboard`."
        ) from e
    backend = open_storage(storage, must_exist=True)
    try:
        _serve(wsgi(backend), host=host, port=port)
    except OSError as e:
        raise ConfigError(
            f"--port {port} cannot be used on {host} ({e.strerror or e}). Choose another --port."
        ) from e


def _serve(app: WSGIApplication, *, host: str, port: int) -> None:
    """Serve ``app`` with wsgiref until SIGINT, which stops it even in the middle of a request.

    optuna-dashboard's own ``run_server`` serves through bottle's wsgiref adapter, whose
    request handler catches whatever the app raises, KeyboardInterrupt included: a Ctrl-C
    that lands while a request is being answered turns into an HTTP 500 and the server keeps
    running. Here SIGINT only asks the serving loop to stop; it answers the request in hand
    and returns. Off the main thread (where no signal handler can be set) it serves until
    the process ends, as ``run_server`` does.
    """
    from wsgiref.simple_server import make_server

    server = make_server(host, port, app)
    previous = None
    if threading.current_thread() is threading.main_thread():

        def stop(signum: int, frame: FrameType | None) -> None:
            # shutdown() waits for the loop to end, so it must run beside it, not in it.
            threading.Thread(target=server.shutdown, daemon=True).start()

        previous = signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.1)  # how soon a stop request is seen
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        server.server_close()
