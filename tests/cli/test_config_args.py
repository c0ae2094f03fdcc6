"""One declaration per run setting: the CLI builds RunConfig from its arguments by name."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from quide_search.cli import build_parser
from quide_search.cli._options import config_from_args
from quide_search.config import RunConfig
from quide_search.errors import ConfigError

NOT_SETTINGS = {"activations", "debug", "help", "no_progress", "json", "name"}
"""Arguments that are not RunConfig fields: --activations is folded into bits, the rest steer
the command (output, debugging) or name the study otherwise (``sweep --name``)."""


@pytest.mark.parametrize("command", ["run", "sweep", "sensitivity"])
def test_every_argument_is_a_setting_of_the_same_name(command: str) -> None:
    _, commands = build_parser()
    dests = {a.dest for a in commands[command]._actions}
    assert dests - {f.name for f in fields(RunConfig)} <= NOT_SETTINGS


def test_run_offers_every_setting_and_passes_each_through() -> None:
    parser, commands = build_parser()
    run_dests = {a.dest for a in commands["run"]._actions}
    assert {f.name for f in fields(RunConfig)} <= run_dests
    args = parser.parse_args(
        ["run", "--trials", "7", "--seed", "3", "--no-warm-start", "--sampler", "random",
         "--max-latency-ms", "2.5", "--confirm-top", "0", "--min-accuracy", "0.5",
         "--bits", "8,4", "--workers", "2", "--out-dir", "elsewhere", "--eval-chunk", "16"]
    )  # fmt: skip
    config = config_from_args(args)
    assert (config.trials, config.seed, config.warm_start, config.sampler) == (
        7,
        3,
        False,
        "random",
    )
    assert (config.max_latency_ms, config.confirm_top, config.workers) == (2.5, 0, 2)
    assert (config.out_dir, config.eval_chunk, config.bits) == ("elsewhere", 16, ("int8", "int4"))
    # A floor given alone replaces the drop rule; with neither, the drop is 0.01.
    assert (config.min_accuracy, config.max_accuracy_drop) == (0.5, None)
    default = config_from_args(parser.parse_args(["run"]))
    assert (default.max_accuracy_drop, default.min_accuracy, default.warm_start) == (
        0.01,
        None,
        True,
    )
    # An argument left at None takes the field's default (--seq-len's None is 512).
    assert (default.seq_len, default.eval_windows, default.dtype) == (512, 64, "auto")


def test_sweep_and_sensitivity_pass_their_settings_through(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from quide_search.cli import main

    seen: list[RunConfig] = []

    def capture(config: RunConfig) -> None:
        seen.append(config)
        raise ConfigError("captured")  # stop before anything is measured

    monkeypatch.setattr("quide_search.study.sweep.run_sweep", capture)
    monkeypatch.setattr("quide_search.study.session.open_session", capture)
    out = str(tmp_path)
    sweep_args = ["sweep", "--name", "u", "--out-dir", out, "--batch-size", "4",
                  "--max-accuracy-drop", "0.05", "--bits", "8", "--device", "cpu"]  # fmt: skip
    assert main(sweep_args) == 2
    assert main(["sensitivity", "--study", "s", "--out-dir", out, "--threads", "1",
                 "--device", "cpu", "--bits", "8"]) == 2  # fmt: skip
    sweep, sensitivity = seen
    assert (sweep.study, sweep.out_dir, sweep.batch_size) == ("u", out, 4)
    assert (sweep.max_accuracy_drop, sweep.bits) == (0.05, ("int8",))
    assert (sensitivity.study, sensitivity.out_dir, sensitivity.threads) == ("s", out, 1)
    assert sensitivity.trials == 0  # the sensitivity pass runs no trial
