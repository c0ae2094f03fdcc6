"""`quide-search dashboard` serves optuna-dashboard; a headless browser sees the study."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.request
from pathlib import Path

import _browser
import pytest
from _procs import cli, start

from quide_search.config import RunConfig
from quide_search.study import run_search


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(_browser.chromium() is None, reason="no chromium: apt-get install chromium")
def test_dashboard_shows_the_study_and_its_trials(tmp_path: Path, digits_task) -> None:  # type: ignore[no-untyped-def]
    config = RunConfig(out_dir=str(tmp_path), device="cpu", trials=5)
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
        out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert f"study page: {base}/dashboard/studies/" in out
