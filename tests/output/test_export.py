from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from optimum.quanto import requantize

from quide_search.backends import get_backend
from quide_search.config import RunConfig
from quide_search.errors import ConfigError
from quide_search.output.export import export_plan
from quide_search.output.record import load_plan
from quide_search.output.replay import evaluate_plan
from quide_search.study import load_study, run_search
from quide_search.tasks.models import SimpleCNN

QUANTO = get_backend("quanto")


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("export")
    config = RunConfig(out_dir=str(tmp), device="cpu", trials=6, latency_sample_ms=1.0)
    run_search(config, progress=False)
    return tmp


def _storage(d: Path) -> str:
    return f"sqlite:///{d}/simplecnn-digits.db"


def test_export_best_has_required_fields(study_dir: Path) -> None:
    out = export_plan(
        study="simplecnn-digits", storage=_storage(study_dir), out=study_dir / "p.json"
    )
    record = json.loads(out.read_text())
    assert record["schema_version"] == 2 and record["backend"] == "quanto"
    assert (record["model"], record["dataset"]) == ("simplecnn", "digits")
    assert set(record["metrics"]) >= {"C", "P", "T_ms", "I", "I_prime", "gate_passed", "latency"}
    assert set(record["metrics"]["latency"]) >= {"device", "batch_size", "threads", "unit"}
    assert record["quantization_map"] == QUANTO.quantization_map(load_plan(out)[0])
    study = load_study(study="simplecnn-digits", storage=_storage(study_dir))
    assert record["protocol"] == study.user_attrs["protocol"]
    # 'best' is the recommended plan: the best by the confirmed I' among the finalists
    # feasible by their confirmed T and passing the gate on the held-out test split.
    passed_test = {e["trial"] for e in study.user_attrs["test"]["entries"]
                   if e["trial"] != "float" and e["gate_passed_test"]}  # fmt: skip
    confirmed = [e for e in study.user_attrs["confirmation"]["entries"]
                 if e["trial"] in passed_test and e["feasible_confirmed"]]  # fmt: skip
    best = max(confirmed, key=lambda e: e["I_prime_confirmed"])
    assert record["source"]["trial"] == best["trial"]
    assert record["metrics"]["T_confirmed_ms"] == best["T_confirmed_ms"]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert record["metrics"]["I_prime"] == done[[t.number for t in done].index(
        best["trial"])].user_attrs["I_prime"]  # fmt: skip


def test_export_trial_number_and_bad_selector(study_dir: Path) -> None:
    out = export_plan(
        study="simplecnn-digits", storage=_storage(study_dir), trial=1, out=study_dir / "t1.json"
    )
    plan, record = load_plan(out)
    assert record["source"]["trial"] == 1 and set(plan.layers.values()) == {"int4"}
    with pytest.raises(ConfigError, match="must name a completed trial"):
        export_plan(
            study="simplecnn-digits",
            storage=_storage(study_dir),
            trial=99,
            out=study_dir / "x.json",
        )
    assert not (study_dir / "x.json").exists()


def test_requantize_exported_map_equals_trial_model(study_dir: Path, digits_task) -> None:  # type: ignore[no-untyped-def]
    out = export_plan(
        study="simplecnn-digits", storage=_storage(study_dir), out=study_dir / "q.json"
    )
    plan, record = load_plan(out)
    trial_model = QUANTO.apply(digits_task.model, plan)
    skeleton = SimpleCNN(in_channels=1, image_size=8, num_classes=10)
    # quanto's own requantize takes the exported map as it is.
    with torch.no_grad():
        requantize(
            skeleton,
            trial_model.state_dict(),
            record["quantization_map"],
            device=torch.device("cpu"),
        )
        x = digits_task.splits.eval.inputs[:64]
        assert torch.equal(skeleton(x), trial_model(x))


def test_evaluate_reproduces_p_exactly(study_dir: Path) -> None:
    out = export_plan(
        study="simplecnn-digits", storage=_storage(study_dir), out=study_dir / "e.json"
    )
    replay = evaluate_plan(out, device="cpu")
    _, record = load_plan(out)
    assert replay.reproduced is True
    assert record["metrics"]["P"] == replay.measured.P
    assert record["metrics"]["C"] == replay.measured.C
    with pytest.raises(ConfigError, match="--model must match"):
        evaluate_plan(out, device="cpu", model="resnet18")


def test_evaluate_uses_the_studys_evaluation_and_latency_threads(study_dir: Path) -> None:
    out = export_plan(
        study="simplecnn-digits", storage=_storage(study_dir), out=study_dir / "t.json"
    )
    record = json.loads(out.read_text())
    protocol = record["protocol"]
    protocol["evaluation"]["threads"], protocol["latency"]["threads"] = 1, 2
    split = study_dir / "t2.json"
    split.write_text(json.dumps(record))
    torch.set_num_threads(3)  # conftest restores torch's
    replay = evaluate_plan(split, device="cpu")
    assert replay.latency["threads"] == 2 and torch.get_num_threads() == 3
    assert replay.latency["source"] == "measured"  # a table study's T is measured again
    assert replay.reproduced is True


def test_yaml_export_reads_back_as_the_same_plan(study_dir: Path) -> None:
    storage = _storage(study_dir)
    as_json = export_plan(study="simplecnn-digits", storage=storage, out=study_dir / "b.json")
    as_yaml = export_plan(
        study="simplecnn-digits", storage=storage, out=study_dir / "b.yaml", fmt="yaml"
    )
    assert as_yaml.read_text().startswith("generator: quide-search\nschema_version: 2\n")
    assert load_plan(as_yaml) == load_plan(as_json)
    assert evaluate_plan(as_yaml, device="cpu").reproduced is True


def test_pareto_export_writes_every_front_point_and_an_index(study_dir: Path) -> None:
    storage = _storage(study_dir)
    out = export_plan(
        study="simplecnn-digits", storage=storage, trial="pareto", out=study_dir / "front"
    )
    index = json.loads((out / "index.json").read_text())
    stored = load_study(study="simplecnn-digits", storage=storage).user_attrs["pareto_front"]
    assert [p["trial"] for p in index["front"]] == [p["trial"] for p in stored]
    for point in index["front"]:
        plan, record = load_plan(out / point["path"])
        assert record["source"]["trial"] == point["trial"]
        assert record["metrics"]["P"] == point["P"]


def test_checkpoint_reloads_to_the_trial_model_and_its_bytes_are_c(study_dir: Path) -> None:
    import struct

    from quide_search import load_quantized
    from quide_search.tasks.resolver import load_task

    storage = _storage(study_dir)
    out = export_plan(
        study="simplecnn-digits", storage=storage, trial=1, out=study_dir / "ck", checkpoint=True
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "model.safetensors", "plan.json", "quantization_map.json",
        "quide-manifest.json",
    ]  # fmt: skip
    plan, record = load_plan(out / "plan.json")
    task = load_task()
    trial_model = QUANTO.apply(task.model, plan)
    torch.manual_seed(123)  # a skeleton with other float weights: they must not matter
    reloaded = load_quantized(SimpleCNN(), out)
    x = task.splits.eval.inputs
    # The README's own loading code, run as written, gives the same model.
    readme = (out / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict[str, object] = {}
    exec(code.replace("path/to/this/folder", str(out)), scope)  # noqa: S102 - our own README
    assert "optimum.quanto.requantize" in readme
    with torch.no_grad():
        assert torch.equal(reloaded(x), trial_model(x))
        assert torch.equal(scope["model"](x), trial_model(x))  # type: ignore[operator]
    weights = out / "model.safetensors"
    header = struct.unpack("<Q", weights.read_bytes()[:8])[0]
    tensor_bytes = weights.stat().st_size - 8 - header
    assert tensor_bytes == record["metrics"]["stored_bytes"]
    assert record["metrics"]["C"] == pytest.approx(
        record["metrics"]["baseline_bytes"] / tensor_bytes
    )


def test_interrupted_checkpoint_export_keeps_the_old_one(
    study_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch

    storage = _storage(study_dir)
    out = study_dir / "ck-atomic"
    export_plan(study="simplecnn-digits", storage=storage, trial=0, out=out, checkpoint=True)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def dies_half_way(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        export_plan(study="simplecnn-digits", storage=storage, trial=1, out=out, checkpoint=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in study_dir.iterdir() if p.name.startswith(".ck-atomic")] == []


def test_load_quantized_names_missing_files(tmp_path: Path) -> None:
    from quide_search import load_quantized
    from quide_search.errors import DataError

    with pytest.raises(DataError, match=r"lacks model.safetensors, quantization_map.json \(or"):
        load_quantized(SimpleCNN(), tmp_path)
    with pytest.raises(DataError, match="must be a folder"):
        load_quantized(SimpleCNN(), tmp_path / "none")


def test_checkpoint_never_replaces_a_folder_it_did_not_write(study_dir: Path) -> None:
    storage = _storage(study_dir)
    users = study_dir / "my-folder"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    for out in (users, study_dir):  # a user's folder, and the folder holding the study itself
        before = sorted(p.name for p in out.iterdir())
        with pytest.raises(ConfigError, match="holds other files"):
            export_plan(study="simplecnn-digits", storage=storage, out=out, checkpoint=True)
        assert sorted(p.name for p in out.iterdir()) == before
    assert (users / "notes.txt").read_text() == "mine"
    assert load_study(study="simplecnn-digits", storage=storage).trials


def test_a_checkpoint_is_replaced_by_the_next_export_of_it(study_dir: Path) -> None:
    storage = _storage(study_dir)
    out = study_dir / "ck-again"
    export_plan(study="simplecnn-digits", storage=storage, trial=0, out=out, checkpoint=True)
    export_plan(study="simplecnn-digits", storage=storage, trial=1, out=out, checkpoint=True)
    _, record = load_plan(out / "plan.json")
    assert record["source"]["trial"] == 1
    (out / "extra.txt").write_text("added by hand")
    with pytest.raises(ConfigError, match=r"holds other files \(extra.txt\)"):
        export_plan(study="simplecnn-digits", storage=storage, trial=0, out=out, checkpoint=True)
    assert load_plan(out / "plan.json")[1]["source"]["trial"] == 1


def test_a_plan_file_replaces_only_a_plan_file(study_dir: Path) -> None:
    storage = _storage(study_dir)
    theirs = study_dir / "README.md"
    theirs.write_text("# my notes")
    with pytest.raises(ConfigError, match="may replace only a file that quide-search wrote"):
        export_plan(study="simplecnn-digits", storage=storage, out=theirs)
    assert theirs.read_text() == "# my notes"
    ours = study_dir / "again.json"
    export_plan(study="simplecnn-digits", storage=storage, trial=0, out=ours)
    export_plan(study="simplecnn-digits", storage=storage, trial=1, out=ours)
    assert load_plan(ours)[1]["source"]["trial"] == 1
    front = study_dir / "front-foreign"
    front.mkdir()
    (front / "index.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds other files"):
        export_plan(study="simplecnn-digits", storage=storage, trial="pareto", out=front)


def test_a_plan_naming_a_factory_is_evaluated_only_with_that_factory_named(
    study_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "planted_factory.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n\ndef make():\n    raise SystemExit(3)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = export_plan(
        study="simplecnn-digits", storage=_storage(study_dir), out=tmp_path / "p.json"
    )
    record = json.loads(out.read_text())
    for name in ("planted_factory:make", "os:abort"):
        record["model"] = name
        planted = tmp_path / f"{name.replace(':', '-')}.json"
        planted.write_text(json.dumps(record))
        with pytest.raises(ConfigError, match=f"factory '{name}'.*Pass --model {name}"):
            evaluate_plan(planted, device="cpu")
        with pytest.raises(ConfigError, match="never runs code by itself"):
            evaluate_plan(planted, device="cpu", model="other.module:make")
    assert not marker.exists()
