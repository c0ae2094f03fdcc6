"""The contract every latency source keeps: measured, the per-layer table and the analytic
estimate, each built by ``make_source`` as a study builds it (docs/extending.md).

A new source is added to ``make_source`` and to ``SOURCES`` here; the suite then runs on it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest
from pydantic import TypeAdapter

from quide_search.latency import LatencyContext, LatencySource, SourceKind, make_source

SOURCES = ("measured", "table", "model:cpu-epyc-2c")
"""One ``--latency`` spec per kind of source."""


@pytest.fixture(params=SOURCES)
def source(request: pytest.FixtureRequest, toy_scorer: Any, any_error: None) -> LatencySource:
    from quide_search.latency.settings import latency_context

    context = latency_context(request.param, device=toy_scorer.device, batch_size=1, threads=1,
                              sample_ms=0.2)  # fmt: skip
    context = dataclasses.replace(context, max_repeats=40)
    return make_source(context, toy_scorer.target, precisions=("int8", "int2"))


def test_it_describes_how_t_was_obtained(source: LatencySource) -> None:
    assert source.label and isinstance(source.deterministic, bool)
    kind = source.context.kind  # told apart by type, not by comparing the stored text
    assert isinstance(kind, SourceKind) and source.context.source.startswith(kind.value)
    assert source.deterministic == (kind is not SourceKind.MEASURED)
    described = source.context.to_dict()
    assert json.loads(json.dumps(described)) == described  # stored in the protocol as JSON
    # The protocol reads it back through pydantic, as a resumed study does.
    assert TypeAdapter(LatencyContext).validate_python(described) == source.context


def test_every_plan_gets_a_finite_positive_t(source: LatencySource, toy_scorer: Any) -> None:
    for precision in ("float", "int8", "int2"):
        result = source.latency(toy_scorer.uniform_plan(precision))
        assert math.isfinite(result.median_ms) and result.median_ms > 0, precision


def test_a_deterministic_source_repeats_exactly(source: LatencySource, toy_scorer: Any) -> None:
    plan = toy_scorer.uniform_plan("int8")
    predicted = source.predicted_ms(dict(plan.layers))
    if source.deterministic:
        assert source.latency(plan) == source.latency(plan)
    if predicted is not None:  # what ranks warm starts is the T a trial would get
        assert predicted == source.latency(plan).median_ms


def test_what_it_stores_is_json(source: LatencySource) -> None:
    stored = source.stored()
    assert stored is None or json.loads(json.dumps(stored)) == stored
