"""`quide-search dashboard` serves optuna-dashboard; a headless browser sees the study."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import _browser
import pytest
from _procs import cli, start

from quide_search.config import RunConfig
from quide_search.errors import ConfigError
from quide_search.output.dashboard import serve_dashboard
from quide_search.study import run_search


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(_browser.chromium() is None, reason="no chromium: apt-get install chromium")
def test_dashboard_shows_the_study_and_its_trials(tmp_path: Path, digits_task) -> None:  # type: ignore[no-untyped-def]
    config = RunConfig(out_dir=str(tmp_path), device="cpu", trials=5, latency="model:cpu-epyc-2c")
    run_search(config, progress=False)
    port = _free_port()
    server = start(cli("dashboard", "--study", config.study_name, "--storage",
                       config.storage_url, "--port", str(port)))  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/studies", timeout=2) as r:
                    summaries = json.load(r)["study_summaries"]
                break
            except OSError:
                assert server.poll() is None, server.communicate()
                assert time.monotonic() < deadline, "dashboard did not start"
                time.sleep(0.3)
        [summary] = summaries
        assert summary["study_name"] == config.study_name
        study_page = f"{base}/dashboard/studies/{summary['study_id']}"
        dom = _browser.rendered_dom(study_page)
        assert config.study_name in dom and "I_prime" in dom  # the objective is named
        trials = _browser.rendered_dom(f"{study_page}/trials")
        assert all(f"Trial {n}" in trials for n in range(5))
        for key in ("conv1", "fc2", "T_ms", "I_prime", "gate_passed"):
            assert key in trials, key  # per-layer params and the metric user attributes
    finally:
        server.send_signal(signal.SIGINT)
        try:
            out, err = server.communicate(timeout=30)
        finally:
            server.kill()  # a server that did not stop must not outlive the test
    assert server.returncode == 0, err
    assert f"study page: {base}/dashboard/studies/" in out


_SLOW_APP = """
import sys, time
from quide_search.output.dashboard import _serve

def app(environ, start_response):
    print("in app", flush=True)
    time.sleep(2)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"answered"]

_serve(app, host="127.0.0.1", port=int(sys.argv[1]))
print("stopped", flush=True)
"""


def test_ctrl_c_during_a_request_answers_it_and_stops_the_server() -> None:
    # wsgiref's handler (under optuna-dashboard's run_server) turns a KeyboardInterrupt raised
    # inside the app into an HTTP 500 and serves on; the dashboard must stop all the same.
    port = _free_port()
    server = start([sys.executable, "-c", _SLOW_APP, str(port)])
    replies: list[bytes] = []
    client = threading.Thread(
        target=lambda: replies.append(
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read()
        )
    )
    try:
        _wait_until_listening(port, server)
        client.start()
        assert server.stdout is not None
        assert select.select([server.stdout], [], [], 30)[0], "the request never reached the app"
        assert server.stdout.readline() == "in app\n"  # the request is being answered
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=30)
    finally:
        server.kill()
        if client.ident is not None:
            client.join(timeout=60)
    assert (server.returncode, out, replies) == (0, "stopped\n", [b"answered"]), err


_FAST_APP = """
import sys
from quide_search.output.dashboard import _serve

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"answered"]

_serve(app, host="127.0.0.1", port=int(sys.argv[1]))
"""


def test_a_stalled_client_does_not_hold_up_the_others() -> None:
    port = _free_port()
    server = start([sys.executable, "-c", _FAST_APP, str(port)])
    try:
        _wait_until_listening(port, server)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as stalled:
            stalled.sendall(b"GET / HTTP/1.1\r\nHo")  # half a request, then nothing
            started = time.monotonic()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as reply:
                assert reply.read() == b"answered"
            assert time.monotonic() - started < 10
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.communicate(timeout=30)
        finally:
            server.kill()
    assert server.returncode == 0


def _wait_until_listening(port: int, server: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return
        except OSError:
            assert server.poll() is None, server.communicate()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)


def test_a_port_in_use_is_a_config_error(tmp_path: Path) -> None:
    import optuna

    storage = f"sqlite:///{tmp_path / 'x.db'}"
    optuna.create_study(study_name="s", storage=storage)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"--port {port} cannot be used on 127.0.0.1"):
            serve_dashboard(storage=storage, port=port)


def _call(app, method: str, path: str, host: str, **headers: str) -> tuple[str, bytes]:  # type: ignore[no-untyped-def]
    from wsgiref.util import setup_testing_defaults

    environ: dict[str, object] = {"REQUEST_METHOD": method, "PATH_INFO": path, "HTTP_HOST": host}
    environ.update({f"HTTP_{k.upper()}": v for k, v in headers.items()})
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc=None: status.append(s)))
    return status[0], body


def test_only_loopback_hosts_and_reads_reach_optuna_dashboard(tmp_path: Path) -> None:
    import optuna
    from optuna_dashboard import wsgi

    from quide_search.output.dashboard import loopback_only
    from quide_search.study.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    study = optuna.create_study(study_name="kept", storage=storage)
    delete = f"/api/studies/{study._study_id}"
    app = loopback_only(wsgi(storage))
    for host in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080", "localhost"):
        assert _call(app, "GET", "/api/studies", host)[0] == "200 OK", host
    for host in ("evil.example:8080", "127.0.0.1.evil.example", ""):
        status, body = _call(app, "GET", "/api/studies", host)
        assert status == "403 Forbidden" and b"is not a loopback name" in body, host
    status, body = _call(app, "DELETE", delete, "127.0.0.1:8080")
    assert status == "403 Forbidden" and b"--allow-writes" in body
    assert [s.study_name for s in storage.get_all_studies()] == ["kept"]
    writable = loopback_only(wsgi(storage), allow_writes=True)
    assert _call(writable, "DELETE", delete, "evil.example")[0] == "403 Forbidden"
    # A page of another site may send a request to 127.0.0.1; its browser names the page.
    for origin in ("http://evil.example", "null", "http://127.0.0.1:9999"):
        status, body = _call(writable, "DELETE", delete, "127.0.0.1:8080", origin=origin)
        assert status == "403 Forbidden" and b"not of this dashboard" in body, origin
    assert [s.study_name for s in storage.get_all_studies()] == ["kept"]
    status, _ = _call(writable, "GET", "/api/studies", "127.0.0.1:8080", origin="http://x.example")
    assert status == "200 OK"  # reads are not changes
    own = _call(writable, "DELETE", delete, "127.0.0.1:8080", origin="http://127.0.0.1:8080")
    assert own[0].startswith("204")
    assert storage.get_all_studies() == []
