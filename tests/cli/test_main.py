from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _procs import stored_files

from quide_search.cli import build_parser, main


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding one 4-trial study, an exported plan and plan files to break."""
    tmp = tmp_path_factory.mktemp("cli")
    old = os.getcwd()
    os.chdir(tmp)
    try:
        run = ["run", "--trials", "4", "--no-progress", "--device", "cpu"]
        assert main([*run, "--latency-sample-ms", "1"]) == 0
        assert main(["export", "--study", "simplecnn-digits", "--out", "plan.json"]) == 0
    finally:
        os.chdir(old)
    record = json.loads((tmp / "plan.json").read_text())
    (tmp / "other-model.json").write_text(json.dumps({**record, "model": "resnet50"}))
    (tmp / "other-dataset.json").write_text(json.dumps({**record, "dataset": "svhn"}))
    # A plan's layers edited by hand: its quantization_map (derived from them) dropped too.
    edited = {k: v for k, v in record.items() if k != "quantization_map"}
    (tmp / "bad-layer.json").write_text(json.dumps({**edited, "layers": {"fc9": "int8"}}))
    (tmp / "map.json").write_text(json.dumps({**record, "layers": {"fc1": "int2"}}))
    metrics, protocol, task = record["metrics"], record["protocol"], record["protocol"]["task"]
    for name, changed in (
        ("inf", {"metrics": {**metrics, "C": float("inf")}}),
        ("bigc", {"metrics": {**metrics, "C": 1e308}}),
        ("seed", {"protocol": {**protocol, "seed": 10**30}}),
        ("version", {"schema_version": 2.0}),
        (
            "split",
            {"protocol": {**protocol, "task": {**task, "splits": {**task["splits"], "eval": -1}}}},
        ),
        ("samples", {"protocol": {**protocol, "task": {**task, "eval_samples": 10**12}}}),
        ("datadir", {"protocol": {**protocol, "task": {**task, "data_dir": "notes.txt"}}}),
    ):
        (tmp / f"{name}.json").write_text(json.dumps({**record, **changed}))
    for name, layers in (
        ("conv", {"conv1": "int8", "fc1": "int8"}),
        ("int2", {"fc1": "int2"}),
        ("fc", {"conv1": "float", "fc1": "int4", "fc2": "int8"}),
        ("int4", {"fc1": "int4", "fc2": "int4"}),
    ):
        (tmp / f"{name}-plan.json").write_text(json.dumps({**edited, "layers": layers}))
    for backend in ("torchao", "bogus"):
        (tmp / f"{backend}-backend.json").write_text(json.dumps({**edited, "backend": backend}))
    (tmp / "broken.json").write_text('{"schema_version": 1,')
    (tmp / "deep.json").write_text("[" * 20_000 + "]" * 20_000)
    (tmp / "deep.yaml").write_text("[" * 20_000 + "]" * 20_000)
    (tmp / "notes.txt").write_text("my notes\n")
    os.mkfifo(tmp / "fifo.json")  # a reader of it would wait for a writer forever
    (tmp / "baseline-string.json").write_text(json.dumps({**record, "baseline": "0.97"}))
    import torch

    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp / "wrong.pt")
    (tmp / "garbage.pt").write_bytes(b"not a checkpoint")
    (tmp / "v9.json").write_text(json.dumps({**record, "schema_version": 9}))
    return tmp


def _snapshot(root: Path) -> dict[str, str]:
    return stored_files(root)


BAD_INPUTS = [
    (["run", "--model", "simplecn"], "Did you mean: 'simplecnn'"),
    (["run", "--dataset", "digit"], "Did you mean: 'digits'"),
    (["run", "--bits", "3,8"], "--bits must list precisions among int8 (8), int4 (4)"),
    (["run", "--bits", "fp"], "at least one quantized precision"),
    (["run", "--trials", "-1"], "--trials: must be an integer >= 0, but got -1"),
    (["run", "--trials", "ten"], "--trials: must be an integer >= 0, but got 'ten'"),
    (["run", "--max-accuracy-drop", "1.5"], "--max-accuracy-drop: must lie in [0, 1]"),
    (["run", "--min-accuracy", "-0.1"], "--min-accuracy: must lie in [0, 1]"),
    (["run", "--storage", "foo://bar"], "--storage must be an Optuna storage URL"),
    (["run", "--storage", "sqlite:///no/such/dir/x.db"], "but 'no/such/dir' does not exist"),
    (["run", "--storage", "sqlite:///notes.txt/x.db"], "but 'notes.txt' is a file, not a folder"),
    (["run", "--weights", "."], "but '.' is a folder"),
    (["run", "--storage", "sqlite://"], "--storage sqlite URLs must name a file"),
    (["run", "--study", "bad name!"], "--study: must be 1-128 letters"),
    (["run", "--batch-size", "0"], "--batch-size: must be an integer >= 1"),
    (["run", "--threads", "0"], "--threads: must be an integer >= 1"),
    (["run", "--latency-threads", "0"], "--latency-threads: must be an integer >= 1"),
    (["run", "--device", "tpu"], "invalid choice: 'tpu'"),
    (
        ["run", "--bits", "8,4", "--trials", "6"],
        "needs the same search.precisions (--bits, --activations)",
    ),
    (["sweep", "--bits", "9"], "--bits must list precisions among"),
    (["sweep", "--activations", "int4"], "--activations must list activation precisions among"),
    (
        [
            "run",
            "--study",
            "new",
            "--backend",
            "torchao",
            "--bits",
            "8",
            "--activations",
            "none,int8,fp8",
        ],
        "'w8af8' is not among them. It offers int8, int4, w8a8",
    ),
    (
        ["run", "--backend", "torchao"],  # the study of the quanto run above, before any model
        "resuming study 'simplecnn-digits' needs the same backend (--backend) as when it was "
        "created, but it was 'quanto' and is now 'torchao'",
    ),
    (
        ["export", "--study", "simplecnn-digits", "--trial", "99", "--out", "x.json"],
        "must name a completed trial",
    ),
    (
        ["export", "--study", "simplecnn-digits", "--format", "transformers", "--out", "hf"],
        "--format transformers is for hf: causal language models",
    ),
    (
        ["export", "--study", "simplecnn-digits", "--trial", "last", "--out", "x.json"],
        "--trial must be 'best', 'pareto' or a trial number",
    ),
    (["export", "--study", "nope", "--out", "x.json"], "does not exist"),
    (
        [
            "export",
            "--study",
            "simplecnn-digit",
            "--storage",
            "sqlite:///studies/simplecnn-digits.db",
            "--out",
            "x.json",
        ],
        "Did you mean: 'simplecnn-digits'",
    ),
    (["export", "--study", "simplecnn-digits"], "the following arguments are required: --out"),
    (["evaluate", "--plan", "missing.json"], "does not exist"),
    (["evaluate", "--plan", "broken.json"], "is not valid JSON"),
    (["evaluate", "--plan", "v9.json"], "schema_version must be 2, but got 9"),
    (["evaluate", "--plan", "map.json"], "must hold the quantization_map its layers make"),
    (["evaluate", "--plan", "inf.json"], "field 'metrics.C' is wrong"),
    (["evaluate", "--plan", "seed.json"], "field 'protocol.seed' is wrong"),
    (["evaluate", "--plan", "bigc.json"], "field 'metrics.C' is wrong: Input should be less"),
    (["evaluate", "--plan", "version.json"], "schema_version"),
    (["evaluate", "--plan", "split.json"], "eval must be a count in [0, 100000000]"),
    (["evaluate", "--plan", "samples.json"], "eval_samples"),
    (
        ["evaluate", "--plan", "datadir.json"],
        "protocol.task.data_dir (override it with --data-dir) must name a folder",
    ),
    (
        ["evaluate", "--plan", "other-model.json"],
        "is for model 'resnet50', which is not registered",
    ),
    (
        ["evaluate", "--plan", "other-dataset.json"],
        "is for dataset 'svhn', which is not registered",
    ),
    (["evaluate", "--plan", "bad-layer.json"], "'fc9' is not a quantizable layer"),
    (["evaluate", "--plan", "plan.json", "--model", "resnet18"], "--model must match"),
    (
        ["evaluate", "--plan", "conv-plan.json", "--backend", "torchao"],
        "--backend torchao must quantize every layer the plan quantizes, but it leaves conv1 "
        "in float (it quantizes Linear). Evaluate the plan with --backend quanto.",
    ),
    (
        ["evaluate", "--plan", "int2-plan.json", "--backend", "torchao"],
        "--backend torchao must run every precision of the plan on cpu, but int2 (on fc1) is "
        "not among its precisions (int8, int4, w8a8, fp8). Evaluate the plan with --backend "
        "quanto.",
    ),
    (
        ["evaluate", "--plan", "bad-layer.json", "--backend", "torchao"],
        "'fc9' is not a quantizable layer",
    ),
    (
        ["evaluate", "--plan", "int4-plan.json", "--backend", "torchao"],
        "but int4 (on fc1, fc2) would not run: int4 on the torchao backend needs each Linear's "
        "in_features divisible by 32 and out_features by 16 (torchao's CPU int4 layout), but "
        "fc2 (64 -> 10) does not. Evaluate the plan with --backend quanto.",
    ),
    (
        ["evaluate", "--plan", "torchao-backend.json"],
        "must name the backend its protocol was measured with, but it names 'torchao' and the "
        "protocol 'quanto'",
    ),
    (
        ["evaluate", "--plan", "bogus-backend.json", "--backend", "quanto"],
        "must name a backend among quanto, torchao, onnxruntime, but it names 'bogus'. Re-export "
        "the plan.",
    ),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["run", "--seed", "-1"], "--seed: must be an integer >= 0, but got -1"),
    (["run", "--seed", str(2**32)], "--seed: must be an integer in [0, 4294967295]"),
    (["run", "--storage", "journal:studies"], "--storage must name a file, but 'studies'"),
    (["run", "--out-dir", "plan.json"], "--out-dir must name a folder, but 'plan.json' is a file"),
    (["run", "--study", "name\n"], "--study: must be 1-128 letters"),
    (["show", "--study", "../../x/y"], "--study: must be 1-128 letters"),
    (["report", "--study", "a/b"], "--study: must be 1-128 letters"),
    (["export", "--study", "a b", "--out", "x.json"], "--study: must be 1-128 letters"),
    (["dashboard", "--study", ".hidden"], "--study: must be 1-128 letters"),
    (["sweep", "--name", "../up"], "--name: must be 1-128 letters"),
    (["run", "--threads", "1000"], "--threads must be at most the machine's"),
    (["run", "--latency-threads", "999"], "add --force-threads"),
    (["evaluate", "--plan", "baseline-string.json"], "field 'baseline' is wrong"),
    (["run", "--latency", "model:cpu-epyc"], "Did you mean: 'cpu-epyc-2c'"),
    (["run", "--model", "hf:./no-such-model"], "must name a local model directory"),
    (["run", "--granularity", "row"], "invalid choice: 'row'"),
    (["run", "--cache-mb", "0"], "--cache-mb must be > 0, but got 0.0"),
    (["run", "--latency-sample-ms", "-1"], "--latency-sample-ms must be a finite number >= 0"),
    (["train", "--model", "simplecn"], "Did you mean: 'simplecnn'"),
    (["run", "--model", "resnet18", "--dataset", "imagenet"], "in ImageFolder layout"),
    (["run", "--model", "resnet18", "--dataset", "digits"], "must be one of imagenet, mnist-5k"),
    (["train", "--dataset", "mnist", "--data-dir", "nodata"], "laid out as MNIST/raw/"),
    (["train", "--epochs", "0"], "--epochs: must be an integer >= 1"),
    (["sweep", "--latency", "guessed"], "--latency must be 'auto', 'measured', 'table'"),
    (
        ["run", "--study", "t", "--latency", "table:missing.json"],
        "--latency table:PATH must name an existing file, but 'missing.json' does not exist",
    ),
    (
        ["run", "--study", "t", "--latency", "table:plan.json"],
        "a latency table must be the JSON quide-search writes (schema 3: base_ms, layers,",
    ),
    (["run", "--sampler", "cmaes"], "CMA-ES models continuous and integer parameters only"),
    (["run", "--sampler", "tpee"], "Did you mean: 'tpe'"),
    (["run", "--objective", "pareto", "--sampler", "gp"], "--sampler gp needs --objective"),
    (["run", "--max-size-mb", "0"], "--max-size-mb must be a finite number > 0"),
    (["run", "--max-latency-ms", "nan"], "--max-latency-ms must be a finite number > 0"),
    (["run", "--early-stop", "maybe"], "invalid choice: 'maybe'"),
    (
        ["sensitivity", "--bits", "8,4"],
        "needs the same search.precisions (--bits, --activations) as when",
    ),
    (["show", "--study", "nope"], "does not exist"),
    (["report", "--study", "nope", "--out", "r.html"], "does not exist"),
    (["dashboard", "--study", "nope"], "does not exist"),
    (["dashboard", "--study", "simplecnn-digits", "--port", "0"], "--port: must be an integer"),
    (["dashboard", "--study", "simplecnn-digits", "--port", "70000"], "must be a TCP port"),
    (["studies", "--out-dir", "nowhere"], "--out-dir must be a directory of studies"),
    (["studies", "--storage", "sqlite:///studies/none.db"], "does not exist"),
    (
        ["export", "--study", "simplecnn-digits", "--out", "x.xml", "--format", "xml"],
        "invalid choice: 'xml'",
    ),
    (
        ["export", "--study", "simplecnn-digits", "--out", "x.json", "--format", "yaml"],
        "--out must end in a suffix of --format yaml, but 'x.json' ends in .json. Give --out "
        "x.yaml, or --format json.",
    ),
    (
        ["export", "--study", "simplecnn-digits", "--trial", "pareto", "--out", "plan.json"],
        "must name a folder",
    ),
    (
        ["export", "--study", "simplecnn-digits", "--checkpoint", "--out", "studies"],
        "must be a new or empty folder, or one that quide-search wrote",
    ),
    (
        ["export", "--study", "simplecnn-digits", "--out", "garbage.pt"],
        "may replace only a file that quide-search wrote",
    ),
    (
        ["report", "--study", "simplecnn-digits", "--out", "broken.json"],
        "may replace only a file that quide-search wrote",
    ),
    (
        ["show", "--study", "simplecnn-digits", "--latency-table", "broken.json"],
        "--latency-table may replace only a file",
    ),
    (["run", "--dataset", "mnist", "--data-dir", "nodata"], "laid out as MNIST/raw/"),
    (["sweep", "--dataset", "cifar10", "--data-dir", "nodata"], "or add --download"),
    (["run", "--bits", "8,int8"], "--bits must not repeat a precision"),
    (["run", "--weights", "missing.pt"], "--weights must name a state-dict file"),
    (["run", "--weights", "wrong.pt"], "must hold a state dict that fits model 'simplecnn'"),
    (["run", "--weights", "garbage.pt"], "must hold a state dict that fits model 'simplecnn'"),
    (["evaluate", "--plan", "plan.json", "--weights", "garbage.pt"], "fits model"),
    (["evaluate", "--plan", "plan.json", "--dataset", "mnist"], "--dataset must match"),
    (["run", "--workers", "0"], "--workers: must be an integer >= 1, but got 0"),
    (["run", "--workers", "5000"], "--workers must be at most 2 per CPU core"),
    (["evaluate", "--plan", "/dev/zero"], "plan file must be a regular file, but '/dev/zero' is"),
    (["evaluate", "--plan", "fifo.json"], "plan file must be a regular file, but 'fifo.json' is"),
    (["evaluate", "--plan", "deep.json"], "plan file 'deep.json' nests too deeply to be a plan"),
    (["evaluate", "--plan", "deep.yaml"], "plan file 'deep.yaml' nests too deeply to be a plan"),
    (["run", "--latency", "table:fifo.json"], "must be a regular file, but 'fifo.json' is"),
    (
        ["run", "--storage", "journal:notes.txt"],
        "must name an Optuna journal file, but 'notes.txt' is another kind of file",
    ),
    (
        ["run", "--storage", "sqlite:///notes.txt"],
        "must name a SQLite database, but 'notes.txt' is another kind of file",
    ),
    (
        ["show", "--study", "simplecnn-digits", "--latency-table", "/proc/nope/t.json"],
        "'/proc/nope/t.json' cannot be opened or created: No such file or directory. Check",
    ),
    (
        ["report", "--study", "simplecnn-digits", "--out", "/proc/self/r.html"],
        "'/proc/self/r.html' cannot be opened or created: No such file or directory. Check",
    ),
    (["run", "--text-file", "plan.json"], "--text-file is read only by causal language models"),
    (
        ["evaluate", "--plan", "plan.json", "--text-file", "plan.json"],
        "--text-file is read only by causal language models, but the plan's model 'simplecnn'",
    ),
    (["run", "--heartbeat", "-5"], "--heartbeat: must be an integer >= 0, but got -5"),
    (["run", "--trials", "100000000"], "--trials must be an integer in [0, 10000000]"),
    (["run", "--eval-samples", "1000000000000"], "--eval-samples: must be an integer in [1, "),
    (
        ["run", "--model", "hf:x", "--seq-len", "99999999"],
        "--seq-len must be an integer in [1, 1048576]",
    ),
    (["run", "--seq-len", "16"], "--seq-len is read only by causal language models"),
    (
        ["sweep", "--eval-windows", "4", "--include-head"],
        "--eval-windows, --include-head are read",
    ),
    (["run", "--eval-batch-size", "99999999"], "--eval-batch-size must be in [1, 65536]"),
    (
        ["run", "--storage", "journal:studies/j.log", "--heartbeat", "5"],
        "--heartbeat needs an RDB storage",
    ),
    (["run", "--storage", "postgresql://nobody@127.0.0.1:1/x"], "cannot be opened"),
    (
        [
            "export",
            "--study",
            "nope",
            "--storage",
            "sqlite:///studies/simplecnn-digits.db",
            "--out",
            "x.json",
        ],
        "Studies: simplecnn-digits",
    ),
]


@pytest.mark.parametrize(
    ("argv", "fragment"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS]
)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    workdir: Path,
    argv: list[str],
    fragment: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(workdir)
    before = _snapshot(workdir)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert fragment in err
    assert _snapshot(workdir) == before


@pytest.mark.parametrize(
    ("variable", "argv"),
    [
        ("QUIDE_CACHE_DIR", ["run", "--trials", "1"]),
        ("QUIDE_DATA_DIR", ["run", "--dataset", "mnist", "--trials", "1"]),
    ],
)
def test_a_path_from_the_environment_is_checked_like_a_flag(
    workdir: Path,
    variable: str,
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(workdir)
    monkeypatch.setenv(variable, "plan.json")  # a file, where a folder must be
    before = _snapshot(workdir)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"the environment variable {variable} must name a folder, but 'plan.json' is a " in err
    assert _snapshot(workdir) == before


def test_export_refuses_its_folder_before_building_a_model(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import quide_search.output.export as export

    def no_model(*args: object) -> None:
        raise AssertionError("a model was built before --out was checked")

    monkeypatch.chdir(workdir)
    monkeypatch.setattr(export, "_quantized_model", no_model)
    study = ["export", "--study", "simplecnn-digits", "--checkpoint"]
    assert main([*study, "--out", "studies/simplecnn-digits.db"]) == 2
    assert "--out must name a folder, but 'studies/simplecnn-digits.db' is a file" in (
        capsys.readouterr().err
    )
    assert main([*study, "--out", "studies"]) == 2
    assert "must be a new or empty folder" in capsys.readouterr().err


def test_debug_shows_the_traceback(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from quide_search.errors import ConfigError

    monkeypatch.chdir(workdir)
    with pytest.raises(ConfigError):
        main(["run", "--model", "nope", "--debug"])


def test_evaluate_and_sweep_commands(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    assert main(["evaluate", "--plan", "plan.json", "--device", "cpu"]) == 0
    replayed = capsys.readouterr().out
    # P is scored as in the study and reproduces; T is measured again on this machine.
    assert "P and P_test reproduced exactly" in replayed
    # The same kind of plan applied by torchao: int4 on fc1 runs, though torchao's int4 could
    # not take fc2 (64 -> 10), which the plan keeps at int8.
    assert main(["evaluate", "--plan", "fc-plan.json", "--backend", "torchao"]) == 0
    assert "measured with quanto, so P is not compared" in capsys.readouterr().out
    assert "on cpu (measured, wall_clock, samples of >= 1 ms)" in replayed
    sweep = ["sweep", "--bits", "float,8,4", "--device", "cpu", "--out-dir", "sw"]
    assert main([*sweep, "--latency-sample-ms", "1"]) == 0
    out = capsys.readouterr().out
    assert "knee:" in out and (workdir / "sw" / "simplecnn-digits.sweep.csv").exists()
    # The rows were timed side by side, and the knee is chosen on that confirmed T.
    result = json.loads((workdir / "sw" / "simplecnn-digits.sweep.json").read_text())
    assert [r["precision"] for r in result["rows"]] == ["float", "int8", "int4"]
    assert all(r["T_confirmed_ms"] > 0 for r in result["rows"])
    knee = max(result["rows"], key=lambda r: (r["I_prime_confirmed"], r["I_confirmed"]))
    assert result["knee"] == knee["precision"] and "by confirmed I'" in out


def test_every_argument_has_a_type_and_unique_help() -> None:
    _, subs = build_parser()
    for name, sub in subs.items():
        helps = []
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            helps.append(action.help)
            assert action.help, (name, action.dest)
            takes_value = action.nargs != 0
            if takes_value:
                assert action.type is not None, (name, action.dest)
        assert len(helps) == len(set(helps)), name


def test_help_is_fast_and_works_as_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "quide_search", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "run" in result.stdout and "sweep" in result.stdout
    code = (
        "import sys, quide_search.cli; "
        "print(any(m in sys.modules for m in ('torch', 'optuna', 'optimum')))"
    )
    probe = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert probe.stdout.strip() == "False"  # the CLI imports no heavy library up front


def test_console_script_runs_embedded_default(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # With no subcommand the CLI runs `run`; its flags may follow directly.
    cmd = [sys.executable, "-m", "quide_search", "--trials", "3", "--no-progress",
           "--latency-sample-ms", "1"]  # fmt: skip
    result = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "recommended" in result.stdout and "float baseline" in result.stdout
    assert "confirmation:" in result.stdout


def test_study_manager_commands(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    assert main(["studies"]) == 0
    listing = capsys.readouterr().out
    assert "simplecnn-digits" in listing and "simplecnn/digits" in listing
    assert main(["studies", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["study"], row["complete"] + row["pruned"], row["failed"]) == (
        "simplecnn-digits",
        4,
        0,
    )
    assert main(["show", "--study", "simplecnn-digits", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["completed"] + shown["pruned"] == 4
    assert shown["best"]["trial"] == row["best_trial"]
    assert {p["trial"] for p in shown["pareto"]} <= set(range(4))
    assert shown["protocol"]["latency"]["source"] == "table"  # auto, on a CPU
    assert main(["show", "--study", "simplecnn-digits"]) == 0
    text = capsys.readouterr().out
    assert "Pareto front over (C max, P max, T min)" in text and "uniform int8" in text
    # The header follows the stored verdict of the table's check (this machine's noise can
    # fail it, and the study then timed its trials).
    from quide_search.latency import TableCheck
    from quide_search.study import load_study

    study = load_study(study="simplecnn-digits", storage="sqlite:///studies/simplecnn-digits.db")
    if TableCheck.from_list(study.user_attrs["latency_table_check"]).passed:
        assert "(per-layer table read in whole-model runs, checked before use)" in text
    else:
        assert "as the latency table failed its check)" in text
    # The verdict follows the stored, timed figures: a 4-trial study's plans can all lose to
    # the float model when this machine times the fallback layers slowly.
    verdict = ("keep the model in float for this target" if shown["keep_float"]
               else f"recommended plan (trial {shown['best']['trial']}")  # fmt: skip
    assert verdict in text and "T_conf" in text


def test_export_formats_from_the_command_line(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    common = ["export", "--study", "simplecnn-digits"]
    assert main([*common, "--format", "yaml", "--out", str(tmp_path / "p.yaml")]) == 0
    assert (tmp_path / "p.yaml").read_text().startswith("generator: quide-search\n")
    # Without --format, the suffix says which.
    assert main([*common, "--out", str(tmp_path / "q.yml")]) == 0
    assert (tmp_path / "q.yml").read_text().startswith("generator: quide-search\n")
    assert main([*common, "--trial", "pareto", "--out", str(tmp_path / "front")]) == 0
    index = json.loads((tmp_path / "front" / "index.json").read_text())
    assert sorted(p.name for p in (tmp_path / "front").iterdir()) == sorted(
        ["index.json", "quide-manifest.json", *(p["path"] for p in index["front"])]
    )
    assert main([*common, "--checkpoint", "--out", str(tmp_path / "ck")]) == 0
    assert {p.name for p in (tmp_path / "ck").iterdir()} == {
        "README.md", "plan.json", "model.safetensors", "quantization_map.json",
        "quide-manifest.json",
    }  # fmt: skip


def test_models_and_train_commands(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "simplecnn:" in listing and "--dataset mnist-5k" in listing and "hf:PATH" in listing
    assert main(["train", "--dataset", "digits", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "trained simplecnn on digits: eval P = " in out and "--weights" in out
    weights = out.split("--weights ")[1].split(" to use")[0]
    assert Path(weights).is_file() and "-e2-" in Path(weights).name


def test_a_full_disk_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import sqlalchemy.exc

    import quide_search.study.run as run_module

    def full(*args: object, **kwargs: object) -> None:
        try:
            raise sqlalchemy.exc.OperationalError(
                "INSERT", {}, Exception("database or disk is full")
            )
        except sqlalchemy.exc.OperationalError as e:
            raise RuntimeError("Should not reach.") from e  # what Optuna raised on top

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_module, "run_search", full)
    assert main(["run", "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the disk holding the study database is full" in err

    def enospc(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "studies/x.pareto.json")

    monkeypatch.setattr(run_module, "run_search", enospc)
    assert main(["run", "--trials", "1"]) == 2
    assert "the disk is full (studies/x.pareto.json)" in capsys.readouterr().err

    with pytest.raises(OSError):
        main(["run", "--trials", "1", "--debug"])

    def safetensors_full(*args: object, **kwargs: object) -> None:
        from safetensors import SafetensorError

        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
            'space left on device" })'
        )

    monkeypatch.setattr(run_module, "run_search", safetensors_full)
    assert main(["run", "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the disk is full: No space left on device" in err


def test_the_headline_command_runs_offline_and_says_how_to_run_imagenet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from quide_search.tasks.models import MODELS

    # Smaller and untrained: the command's path is under test here, not ResNet-18's accuracy.
    monkeypatch.setitem(MODELS.get("resnet18").dataset_epochs, "mnist-5k", 0)
    monkeypatch.setenv("QUIDE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    small = ["--eval-samples", "96", "--calib-samples", "16", "--test-samples", "64",
             "--latency", "model:cpu-epyc-2c", "--no-progress"]  # fmt: skip
    assert main(["run", "--model", "resnet18", "--trials", "1", *small]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines()[0] == (
        f"note: no imagenet data in {str(tmp_path / 'data')!r}, so "
        "resnet18 runs offline on mnist-5k; for the imagenet setting pass --dataset imagenet "
        "--data-dir DIR --weights imagenet."
    )
    assert "study 'resnet18-mnist-5k'" in out and "1 completed trial (1 distinct plan)" in out
    assert (tmp_path / "studies" / "resnet18-mnist-5k.db").is_file()
    assert main(["show", "--study", "resnet18-mnist-5k", "--json"]) == 0
    splits = json.loads(capsys.readouterr().out)["protocol"]["task"]["splits"]
    assert (splits["calib"], splits["eval"], splits["test"], splits["train"]) == (16, 96, 64, 2500)


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--model", "simplecn"],
        ["run", "--dataset", "digit"],
        ["run", "--bits", "3,8"],
        ["evaluate", "--plan", "missing.json"],
        ["studies"],
        ["show", "--study", "simplecnn-digits"],
        ["report", "--study", "simplecnn-digits", "--out", "r.html"],
        ["export", "--study", "simplecnn-digits", "--out", "p2.json"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_typos_and_reading_commands_never_import_torch(workdir: Path, args: list[str]) -> None:
    probe = ("import sys; from quide_search.cli import main; rc = main(sys.argv[1:]); "
             "print('torch' in sys.modules); sys.exit(rc)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe, *args], cwd=workdir, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.stdout.strip().splitlines()[-1] == "False", done.stderr
    assert done.returncode == (0 if args[0] in ("studies", "show", "report", "export") else 2)


def test_a_budget_is_answered_from_the_stored_trials(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from quide_search.study import load_study
    from quide_search.study.summary import completed_rows

    monkeypatch.chdir(workdir)
    storage = "sqlite:///studies/simplecnn-digits.db"
    rows = completed_rows(load_study(study="simplecnn-digits", storage=storage))
    passing = sorted((r for r in rows if r.gate_passed), key=lambda r: r.stored_bytes)
    limit = passing[0].stored_bytes / 2**20  # only the smallest passing plan fits
    study = ["--study", "simplecnn-digits"]
    capsys.readouterr()
    assert main(["show", *study, "--max-size-mb", f"{limit:.9f}", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)["budget"]
    assert answer["best"]["trial"] == passing[0].trial and answer["trials"] == len(rows)
    assert answer["best"]["stored_bytes"] == passing[0].stored_bytes and answer["best"]["feasible"]
    assert answer["limits"] == f"size <= {float(f'{limit:.9f}'):g} MiB" and answer["why"] is None
    assert main(["show", *study, "--max-size-mb", f"{limit:.9f}"]) == 0
    text = capsys.readouterr().out
    if "P_test" in answer["best"]:  # a finalist: its test P is in the table
        assert "P_test" in text.split("best within")[1]
    else:  # not a finalist: said so, with how to score it
        assert f"not scored (trial {passing[0].trial} was not a finalist)" in text
    out = tmp_path / "small.json"
    assert main(["export", *study, "--max-size-mb", f"{limit:.9f}", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["source"]["trial"] == passing[0].trial
    assert main(["show", *study, "--max-size-mb", f"{limit / 2:.9f}"]) == 0
    assert "no stored plan of study 'simplecnn-digits' passes its gate" in capsys.readouterr().out
    assert main(["export", *study, "--trial", "0", "--max-size-mb", "1", "--out", str(out)]) == 2
    assert main(["show", *study, "--max-latency-ms", "0"]) == 2
    assert "--max-latency-ms must be a finite number > 0, but got 0.0" in capsys.readouterr().err
    assert len(completed_rows(load_study(study="simplecnn-digits", storage=storage))) == len(rows)
