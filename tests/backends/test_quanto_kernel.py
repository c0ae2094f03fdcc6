"""optimum-quanto's int4/int2 CPU kernel is reused whatever PATH a process starts with."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from quide_search.backends import get_backend
from quide_search.plan import BitPlan

_INT4 = """
import torch
from quide_search.backends import get_backend
from quide_search.plan import BitPlan
model = torch.nn.Sequential(torch.nn.Linear(64, 64))
plan = BitPlan(model="m", dataset="d", layers={"0": "int4"})
quantized = get_backend("quanto").apply(model, plan)
with torch.no_grad():
    quantized(torch.ones(1, 64))
print("ran")
"""


def _ninja_log() -> Path:
    import optimum.quanto

    root = Path(str(optimum.quanto.__file__)).parent
    return root / "library/extensions/cpp/build/.ninja_log"


def test_a_process_without_the_venv_on_path_rebuilds_nothing(tmp_path: Path) -> None:
    venv_bin = Path(sys.executable).parent
    if not (venv_bin / "ninja").is_file():
        pytest.skip(f"no ninja beside {sys.executable}: nothing decides between two ninjas")
    # Built here first (a no-op where the install built it), with this environment's ninja.
    model = torch.nn.Sequential(torch.nn.Linear(64, 64))
    plan = BitPlan(model="m", dataset="d", layers={"0": "int4"})
    with torch.no_grad():
        get_backend("quanto").apply(model, plan)(torch.ones(1, 64))
    log = _ninja_log()
    before = log.read_text() if log.exists() else ""
    # As cron or systemd start it: the system's folders only, the venv's bin not among them.
    path = os.pathsep.join(p for p in ("/usr/local/bin", "/usr/bin", "/bin") if Path(p).is_dir())
    assert shutil.which("ninja", path=path) != str(venv_bin / "ninja")
    env = {**os.environ, "PATH": path}
    done = subprocess.run([sys.executable, "-c", _INT4], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "ran", done.stderr
    assert "building optimum-quanto" not in done.stderr
    after = log.read_text() if log.exists() else ""
    assert after == before, "the kernel was built again"
