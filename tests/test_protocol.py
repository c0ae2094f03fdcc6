"""A study's protocol records what its numbers mean; a resume must bring the same one."""

from __future__ import annotations

import json

import pytest

from quide_search.config import RunConfig
from quide_search.errors import ConfigError
from quide_search.protocol import PROTOCOL_SCHEMA_VERSION, check_resume, study_protocol


def test_study_protocol_describes_the_run_as_json(cpu_scorer) -> None:  # type: ignore[no-untyped-def]
    config = RunConfig(bits=("qint8", "qint4"), seed=3)
    protocol = study_protocol(config, cpu_scorer)
    assert json.loads(json.dumps(protocol)) == protocol
    assert (protocol["schema_version"], protocol["model"], protocol["dataset"]) == (
        PROTOCOL_SCHEMA_VERSION,
        cpu_scorer.task.model_name,
        cpu_scorer.task.dataset_name,
    )
    assert (protocol["bits"], protocol["seed"], protocol["unit"]) == (["qint8", "qint4"], 3, "ms")
    assert protocol["layers"] == list(cpu_scorer.weight_counts)
    # The reference and the sample floor are measured by the creator and stored apart.
    assert protocol["latency"]["method"] == "wall_clock"
    assert not {"reference_ms", "sample_ms", "reference_qtypes", "torch_version"} & set(
        protocol["latency"]
    )


def test_check_resume_names_the_first_field_that_differs(cpu_scorer) -> None:  # type: ignore[no-untyped-def]
    stored = study_protocol(RunConfig(bits=("qint8", "qint4")), cpu_scorer)
    check_resume(stored, dict(stored), "s")  # the same protocol resumes
    changed = study_protocol(RunConfig(bits=("qint8",)), cpu_scorer)
    with pytest.raises(ConfigError, match=r"same bits .* was \['qint8', 'qint4'\] and is now"):
        check_resume(stored, changed, "s")


def test_recorded_fields_may_differ_and_later_ones_bind_only_studies_that_have_them() -> None:
    stored = {"model": "m", "bits": ["qint8"], "seed": 1, "versions": {"torch": "2.13"}}
    check_resume(stored, {**stored, "seed": 2, "versions": {"torch": "2.14"}}, "s")
    # A study created before eval_threads was stored resumes with any thread count ...
    check_resume(stored, {**stored, "eval_threads": 4}, "s")
    # ... and one that stored it needs the same.
    with pytest.raises(ConfigError, match="same eval_threads as when .* was 2 and is now 4"):
        check_resume({**stored, "eval_threads": 2}, {**stored, "eval_threads": 4}, "s")
