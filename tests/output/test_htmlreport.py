"""The HTML report: self-contained, and its plots really render in a headless browser."""

from __future__ import annotations

import html
from pathlib import Path

import _browser
import pytest

from quide_search.config import RunConfig
from quide_search.output.htmlreport import PLOT_IDS, write_report
from quide_search.study import load_study, run_search
from quide_search.study.summary import completed_rows, study_front

needs_browser = pytest.mark.skipif(
    _browser.chromium() is None, reason="no chromium: apt-get install chromium (.ci/run does)"
)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int]:
    tmp = tmp_path_factory.mktemp("report")
    config = RunConfig(out_dir=str(tmp), device="cpu", trials=12, latency_sample_ms=1.0)
    run_search(config, progress=False)
    rows = completed_rows(load_study(study=config.study_name, storage=config.storage_url))
    [path] = write_report(study=config.study_name, storage=config.storage_url, out=tmp / "r.html")
    return path, len(rows), len(study_front(rows))


def test_report_is_one_offline_file(report: tuple[Path, int, int]) -> None:
    from html.parser import HTMLParser

    class Sources(HTMLParser):
        found: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.found += [v or "" for k, v in attrs if k in ("src", "href")]

    path, _, _ = report
    page = path.read_text()
    parser = Sources()
    parser.feed(page)
    assert parser.found == []  # nothing is fetched: no script src, no stylesheet link
    assert "Plotly" in page and len(page) > 3_000_000  # plotly.js itself is inside
    for plot in PLOT_IDS:
        assert f'id="{plot}"' in page
    assert "Uniform precisions" in page and "knee" in page
    # The stored sensitivity table and the confirmation of the finalists are shown.
    sensitivity = page.split("<h2>Sensitivity</h2>")[1]
    assert "stores no sensitivity" not in sensitivity and "<td>conv1</td>" in sensitivity
    confirmation = page.split("<h2>Confirmation</h2>")[1].split("<h2>")[0]
    assert "finalists re-timed by measurement" in confirmation and "<td>float</td>" in confirmation
    # So is each finalist's P on the search split beside its P on the held-out test split.
    test = page.split("<h2>Held-out test split</h2>")[1].split("<h2>")[0]
    assert "held-out samples the search never saw" in test and "<th>P (test split)</th>" in test
    assert "<td>float</td>" in test
    unbiased = "held out from the search and the float model's training: the unbiased estimate"
    held_out = html.escape(f"on the held-out test split ({unbiased})")
    if "keep the model in float for this target" in page:
        # This machine timed the float model fast enough to beat every plan (quanto's int
        # plans run no faster on a CPU): the verdict names no plan, so no plan's test P.
        assert held_out not in page
    else:
        assert held_out in page
    assert '<meta name="generator" content="quide-search">' in page


@needs_browser
def test_plots_render_with_one_point_per_trial(report: tuple[Path, int, int]) -> None:
    path, completed, front = report
    dom = _browser.rendered_dom(path.as_uri())
    points = _browser.count_inside(dom, PLOT_IDS, "point", "path")
    # Pareto plot: every trial, the front's points, and the knee and recommended markers.
    assert points["pareto"] == completed + front + 2
    assert points["progress"] == completed
    assert _browser.count_inside(dom, ("bits",), "hm", "g")["bits"] == 1
    assert _browser.count_inside(dom, ("bits",), "ytick", "g")["bits"] == front


def test_png_without_kaleido_is_a_clear_error(
    report: tuple[Path, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    import plotly.graph_objects as go

    from quide_search.errors import ConfigError

    def no_kaleido(self: go.Figure, *args: object, **kwargs: object) -> None:
        raise ValueError("Image export using the 'kaleido' engine requires the kaleido package")

    monkeypatch.setattr(go.Figure, "write_image", no_kaleido)
    path, _, _ = report
    storage = f"sqlite:///{path.parent}/simplecnn-digits.db"
    with pytest.raises(ConfigError, match="--png needs kaleido"):
        write_report(study="simplecnn-digits", storage=storage, out=path, png=True)


@needs_browser
def test_png_files_where_kaleido_runs(report: tuple[Path, int, int], tmp_path: Path) -> None:
    pytest.importorskip("kaleido", reason="kaleido not installed: pip install -e '.[png]'")
    path, _, _ = report
    storage = f"sqlite:///{path.parent}/simplecnn-digits.db"
    written = write_report(
        study="simplecnn-digits", storage=storage, out=tmp_path / "r.html", png=True
    )
    assert [p.name for p in written] == ["r.html", *(f"r-{k}.png" for k in PLOT_IDS)]
    for png in written[1:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
