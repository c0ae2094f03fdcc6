from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    api = next(b for b in blocks if "run_search(" in b)
    monkeypatch.chdir(tmp_path)
    exec(compile(api, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "True"
    assert (tmp_path / "plan.json").exists()
    assert (tmp_path / "best" / "model.safetensors").exists()


def test_readme_custom_model_runs_from_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from quide_search.cli import main

    text = README.read_text(encoding="utf-8")
    factory = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S)
                   if b.startswith("# mytask.py"))  # fmt: skip
    (tmp_path / "mytask.py").write_text(factory, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    argv = ["run", "--model", "mytask:make", "--trials", "3", "--no-progress",
            "--latency", "model:cpu-epyc-2c"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "float baseline" in out and "study 'mytask-make'" in out
    sys.modules.pop("mytask", None)
