"""A study of the onnxruntime backend: export --format onnx deploys without quide-search or
torch and reproduces P; evaluate reproduces P and P_test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from quide_search.config import RunConfig
from quide_search.errors import ConfigError
from quide_search.output.export import export_plan
from quide_search.output.replay import evaluate_plan
from quide_search.study import load_study, run_search

STUDY = "simplecnn-digits"

# Run in a fresh interpreter where importing torch or quide_search fails: the recipe of
# plan.json, then P of the exported model on the given inputs and labels.
_ALONE = """
import json, sys
sys.modules["torch"] = None
sys.modules["quide_search"] = None
import numpy as np
folder, inputs, labels, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
scope = {"folder": folder}
exec(json.load(open(folder + "/plan.json"))["loading"]["recipe"], scope)
x, y = np.load(inputs), np.load(labels)
predicted = np.concatenate([scope["run"](x[i : i + batch]).argmax(-1)
                            for i in range(0, len(x), batch)])
print(json.dumps({"P": float((predicted == y).mean()),
                  "torch": "torch" in sys.modules and sys.modules["torch"] is not None}))
"""


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("onnx")
    config = RunConfig(out_dir=str(tmp), device="cpu", trials=6, backend="onnxruntime",
                       bits=("w8a8", "int4", "float"), latency="measured",
                       latency_sample_ms=1.0, early_stop="off")  # fmt: skip
    run_search(config, progress=False)
    return tmp


def _storage(d: Path) -> str:
    return f"sqlite:///{d}/{STUDY}.db"


def test_the_onnx_export_runs_without_quide_search_or_torch_and_gives_ps(
    study_dir: Path, digits_task
) -> None:  # type: ignore[no-untyped-def]
    out = export_plan(study=STUDY, storage=_storage(study_dir), out=study_dir / "onnx",
                      fmt="onnx")  # fmt: skip
    record = json.loads((out / "plan.json").read_text())
    assert record["loading"]["files"] == ["model.onnx"] and (out / "model.onnx").is_file()
    assert record["backend"] == "onnxruntime"
    splits = {"search": digits_task.splits.eval, "test": digits_task.splits.test}
    batch = record["protocol"]["evaluation"]["batch_size"]
    for name, split in splits.items():
        np.save(study_dir / f"{name}-x.npy", split.inputs.numpy())
        np.save(study_dir / f"{name}-y.npy", split.labels.numpy())
        probe = subprocess.run(
            [sys.executable, "-c", _ALONE, str(out), str(study_dir / f"{name}-x.npy"),
             str(study_dir / f"{name}-y.npy"), str(batch)],
            capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        alone = json.loads(probe.stdout)
        assert alone["torch"] is False
        expected = record["metrics"]["P" if name == "search" else "P_test"]
        assert alone["P"] == expected, name
    # The folder's README loads it with quide-search, as written, and says what went in.
    readme = (out / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert "load_task(model='simplecnn', dataset='digits')" in code
    scope: dict[str, object] = {}
    exec(code.replace("path/to/this/folder", str(out)), scope)  # noqa: S102 - our own README
    split = digits_task.splits.eval
    with torch.no_grad():
        logits = torch.cat([scope["model"](split.inputs[i : i + batch])  # type: ignore[operator]
                            for i in range(0, len(split), batch)])  # fmt: skip
    correct = int((logits.argmax(-1) == split.labels).sum())
    assert correct / len(split) == record["metrics"]["P"]  # exactly, counted as the study does
    assert "Inputs: float32, shape (N, 1, 8, 8)." in readme
    assert f"P_test = {record['metrics']['P_test']:.4g} (held-out test split)" in readme


def test_evaluate_of_an_onnxruntime_plan_reproduces_p_and_p_test(study_dir: Path) -> None:
    out = export_plan(study=STUDY, storage=_storage(study_dir), out=study_dir / "plan.json")
    replay = evaluate_plan(out, device="cpu")
    assert replay.reproduced is True
    record = json.loads(out.read_text())
    assert record["metrics"]["P"] == replay.measured.P
    assert record["protocol"]["backend_settings"]["chosen"]["activations"] == "uint8"


def test_every_completed_trial_ran_real_kernels_on_its_quantized_layers(study_dir: Path) -> None:
    from quide_search.search.space import trial_plan

    study = load_study(study=STUDY, storage=_storage(study_dir))
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert done
    for trial in done:
        # Every layer the trial's plan quantizes ran a low-bit kernel, and no other did.
        quantized = [n for n, q in trial_plan(trial).items() if q != "float"]
        assert sorted(trial.user_attrs["kernel_layers"]) == sorted(quantized)
    assert any(trial.user_attrs["kernel_layers"] for trial in done)


def test_a_folder_out_named_like_a_plan_file_is_refused(study_dir: Path) -> None:
    refused = r"--out must name a folder for --format onnx, but .* ends in .json like a plan"
    with pytest.raises(ConfigError, match=refused):
        export_plan(study=STUDY, storage=_storage(study_dir), out=study_dir / "r18.json",
                    fmt="onnx")  # fmt: skip
    assert not (study_dir / "r18.json").exists()


def test_onnx_format_needs_an_onnxruntime_study(tmp_path: Path) -> None:
    config = RunConfig(out_dir=str(tmp_path), device="cpu", trials=1, latency="measured",
                       latency_sample_ms=1.0, confirm_top=0, warm_start=False)  # fmt: skip
    run_search(config, progress=False)
    with pytest.raises(ConfigError, match="--format onnx needs a study whose plans are ONNX"):
        export_plan(study=STUDY, storage=_storage(tmp_path), out=tmp_path / "o", fmt="onnx")
