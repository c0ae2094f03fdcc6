"""Serve optuna-dashboard on loopback for a study's storage.

quide-search writes everything the dashboard shows: per-layer parameters, the C, P, T, I and I'
user attributes, the accuracy-gate constraint, and the objective's name (``I_prime``) through
Optuna's metric names, so nothing here re-implements the dashboard.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["loopback_only", "serve_dashboard", "study_url"]

_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
REQUEST_TIMEOUT_S = 20.0  # a connection that sends nothing this long mid-request is closed
_READ_METHODS = ("GET", "HEAD", "OPTIONS")


def study_url(*, study: str, storage: str, host: str, port: int) -> str:
    """Return the dashboard address of ``study``'s page."""
    from quide_search.study.summary import read_study

    loaded, _ = read_study(study=study, storage=storage)
    return f"http://{host}:{port}/dashboard/studies/{loaded._study_id}"


def serve_dashboard(
    *, storage: str, host: str = "127.0.0.1", port: int = 8080, allow_writes: bool = False
) -> None:
    """Run optuna-dashboard for ``storage`` until interrupted (Ctrl-C, SIGINT).

    The server answers only requests addressed to a loopback name and, unless
    ``allow_writes``, only the methods that read (see :func:`loopback_only`).

    Raises:
        ConfigError: If optuna-dashboard is not installed or the port cannot be bound.
    """
    from quide_search.errors import ConfigError
    from quide_search.study.storage import open_storage

    try:
        from optuna_dashboard import wsgi
    except ImportError as e:
        raise ConfigError(
            "the dashboard needs optuna-dashboard, which is not installed. "
            "Run `pip install optuna-dashboard`."
        ) from e
    backend = open_storage(storage, must_exist=True, read_only=not allow_writes)
    try:
        _serve(loopback_only(wsgi(backend), allow_writes=allow_writes), host=host, port=port)
    except OSError as e:
        raise ConfigError(
            f"--port {port} cannot be used on {host} ({e.strerror or e}). Choose another --port."
        ) from e


def loopback_only(app: WSGIApplication, *, allow_writes: bool = False) -> WSGIApplication:
    """Wrap ``app`` so that only loopback Host headers, and unless ``allow_writes`` only reads,
    reach it.

    A server bound to 127.0.0.1 is still reachable from any page the browser opens: a page on
    another site can rename itself to 127.0.0.1 (DNS rebinding) and then send requests with
    its own Host header, and optuna-dashboard's API deletes studies, trials and notes on
    request. Checking the Host header stops rebinding; refusing POST, PUT, PATCH and DELETE
    keeps the stored studies read-only unless the user asks otherwise (``--allow-writes``).
    With writes allowed, a request that changes the study must not come from another site:
    a browser names the page that sent it in ``Origin`` (a ``text/plain`` POST from any page
    is sent without asking the server first), so that header, where present, must be this
    server's own address. Requests without it come from programs such as curl, not pages.
    Refusals are HTTP 403 with a one-line reason.
    """

    def guarded(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        host = str(environ.get("HTTP_HOST", ""))
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name.lower() not in _LOOPBACK_NAMES:
            return _refuse(start_response, f"Host {host!r} is not a loopback name")
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        if method not in _READ_METHODS and not allow_writes:
            return _refuse(
                start_response,
                f"{method} changes the study; restart with --allow-writes to allow it",
            )
        origin = environ.get("HTTP_ORIGIN")
        if method not in _READ_METHODS and origin is not None and origin != f"http://{host}":
            return _refuse(
                start_response,
                f"{method} from a page of {origin!r}, not of this dashboard "
                f"(http://{host}); only the dashboard's own pages may change the study",
            )
        return app(environ, start_response)

    return guarded


def _refuse(start_response: Any, reason: str) -> list[bytes]:
    body = f"quide-search dashboard: {reason}.\n".encode()
    start_response(
        "403 Forbidden",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]


def _serve(app: WSGIApplication, *, host: str, port: int) -> None:
    """Serve ``app`` with wsgiref until SIGINT, which stops it even in the middle of a request.

    Each connection is answered on its own thread, and one that sends nothing for
    :data:`REQUEST_TIMEOUT_S` is closed, so one slow or stalled client does not hold up the
    others (wsgiref alone answers one connection at a time, however long it takes).

    optuna-dashboard's own ``run_server`` serves through bottle's wsgiref adapter, whose
    request handler catches whatever the app raises, KeyboardInterrupt included: a Ctrl-C
    that lands while a request is being answered turns into an HTTP 500 and the server keeps
    running. Here SIGINT only asks the serving loop to stop; it answers the request in hand
    and returns. Off the main thread (where no signal handler can be set) it serves until
    the process ends, as ``run_server`` does.
    """
    from wsgiref.simple_server import make_server

    server = make_server(host, port, app, *_server_classes())
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


def _server_classes() -> tuple[type[WSGIServer], type[WSGIRequestHandler]]:
    """wsgiref's server answering each connection on a thread, and its handler with a timeout."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

    class ThreadingServer(ThreadingMixIn, WSGIServer):
        # At Ctrl-C, server_close() waits for the requests in hand (a stalled one for at
        # most the timeout), so a reply is not cut off mid-way.
        daemon_threads = False
        block_on_close = True

    class TimedHandler(WSGIRequestHandler):
        timeout = REQUEST_TIMEOUT_S  # the socket's timeout on every read of a request

        def handle(self) -> None:
            try:
                super().handle()
            except (TimeoutError, ConnectionError):
                self.close_connection = True  # an idle or dropped client: closed, no trace

    return ThreadingServer, TimedHandler
