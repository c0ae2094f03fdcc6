"""The output guard: nothing quide-search did not write is replaced, folders swap in whole."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from quide_search.errors import ConfigError
from quide_search.files import (
    MANIFEST,
    check_replaceable,
    is_generated_json,
    stamped,
    write_directory,
)


def _fill(text: str):  # type: ignore[no-untyped-def]
    def fill(folder: Path) -> None:
        (folder / "a.txt").write_text(text)
        (folder / "sub").mkdir()
        (folder / "sub" / "b.txt").write_text(text * 2)

    return fill


def test_a_new_folder_gets_its_files_a_manifest_and_usual_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out = write_directory(tmp_path / "ck", _fill("x"), kind="checkpoint")
    finally:
        os.umask(old)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest == {"generator": "quide-search", "kind": "checkpoint",
                        "files": ["a.txt", "sub/b.txt"]}  # fmt: skip
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "sub" / "b.txt").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no staging folder left


def test_a_folder_it_wrote_is_replaced_whole(tmp_path: Path) -> None:
    out = tmp_path / "ck"
    write_directory(out, _fill("old"), kind="checkpoint")
    (out / "sub" / "b.txt").unlink()  # a manifest may list more than is left
    write_directory(out, lambda f: (f / "c.txt").write_text("new"), kind="checkpoint")
    assert sorted(p.name for p in out.iterdir()) == ["c.txt", MANIFEST]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


@pytest.mark.parametrize("foreign", ["notes.md", "sub/extra.bin"])
def test_a_folder_with_files_it_did_not_write_is_refused(tmp_path: Path, foreign: str) -> None:
    out = tmp_path / "ck"
    write_directory(out, _fill("old"), kind="checkpoint")
    (out / foreign).write_text("mine")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(ConfigError, match=r"must be a new or empty folder.*holds other files"):
        write_directory(out, _fill("new"), kind="checkpoint")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert (out / foreign).read_text() == "mine"
    assert (out / "a.txt").read_text() == "old"


def test_a_users_folder_and_a_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "x.db").write_bytes(b"SQLite")
    with pytest.raises(ConfigError, match=r"holds other files \(x.db\)"):
        write_directory(tmp_path / "studies", _fill("x"), kind="checkpoint")
    assert (tmp_path / "studies" / "x.db").read_bytes() == b"SQLite"
    (tmp_path / "f").write_text("file")
    with pytest.raises(ConfigError, match="must name a folder, but .* is a file"):
        write_directory(tmp_path / "f", _fill("x"), kind="checkpoint")


def test_an_empty_folder_and_the_current_folder_can_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "empty").mkdir()
    write_directory(tmp_path / "empty", _fill("x"), kind="front")
    assert (tmp_path / "empty" / "a.txt").read_text() == "x"
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    write_directory(".", _fill("y"), kind="front")
    assert (tmp_path / "here" / "a.txt").read_text() == "y"


def test_a_failure_while_filling_leaves_the_old_folder(tmp_path: Path) -> None:
    out = tmp_path / "ck"
    write_directory(out, _fill("old"), kind="checkpoint")

    def dies(folder: Path) -> None:
        (folder / "a.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_directory(out, dies, kind="checkpoint")
    assert (out / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_only_stamped_files_are_replaceable(tmp_path: Path) -> None:
    mine = tmp_path / "plan.json"
    mine.write_text(json.dumps(stamped({"schema_version": 1})))
    yaml_file = tmp_path / "plan.yaml"
    yaml_file.write_text("generator: quide-search\nschema_version: 1\n")
    theirs = tmp_path / "README.md"
    theirs.write_text("# mine")
    for path in (mine, yaml_file, tmp_path / "new.json"):
        check_replaceable(path, ours=is_generated_json, flag="--out")
    with pytest.raises(ConfigError, match=r"--out may replace only a file that quide-search"):
        check_replaceable(theirs, ours=is_generated_json, flag="--out")
    with pytest.raises(ConfigError, match="--out must name a file, but .* is a folder"):
        check_replaceable(tmp_path, ours=is_generated_json, flag="--out")
    assert stamped({"generator": "x", "a": 1}) == {"generator": "quide-search", "a": 1}


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_what_a_killed_writer_left_is_removed_by_the_next_write(tmp_path: Path) -> None:
    from quide_search.files import _host, atomic_write_text

    dead, alive, host = _dead_pid(), os.getpid(), _host()
    # A checkpoint export and a file write killed mid-way, one still running here, and one of
    # a writer on another host sharing the folder.
    killed = tmp_path / f".ck.quide-scratch.{host}.{dead}.x1y2"
    killed.mkdir(mode=0o700)
    (killed / "model.safetensors").write_text("half")
    (tmp_path / f".plan.json.quide-scratch.{host}.{dead}.z9").write_text("{half")
    running = tmp_path / f".ck.quide-scratch.{host}.{alive}.busy"
    running.mkdir()
    elsewhere = tmp_path / f".ck.quide-scratch.other-{host}.{dead}.far"
    elsewhere.mkdir()
    write_directory(tmp_path / "ck", _fill("x"), kind="checkpoint")
    atomic_write_text(tmp_path / "plan.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [running.name, elsewhere.name, "ck", "plan.json"]
    )


def test_a_symlinked_folder_is_replaced_without_leaving_the_old_link(tmp_path: Path) -> None:
    real = write_directory(tmp_path / "real", _fill("old"), kind="checkpoint")
    (tmp_path / "l3").symlink_to(real, target_is_directory=True)
    out = write_directory(tmp_path / "l3", _fill("new"), kind="checkpoint")
    assert out.is_dir() and not out.is_symlink() and (out / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l3", "real"]
