from __future__ import annotations

import pytest

from quide_search.cli import main


def test_backends_lists_what_each_runs_here_with_bits_and_reasons(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["backends", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("backends on cpu")
    quanto = next(i for i, line in enumerate(lines) if line.startswith("  quanto 0.2."))
    assert lines[quanto].endswith("quantizes Linear, Conv2d, transformers' Conv1D (as a Linear):")
    offered = lines[quanto + 1].strip().split(", ")
    assert offered[:4] == ["int8 (8)", "int4 (4)", "int2 (2)", "fp8 (8)"]
    assert "w4a8 (4)" in offered and "wf8af8 (8)" in offered
    torchao = next(i for i, line in enumerate(lines) if line.startswith("  torchao 0.18"))
    assert lines[torchao].endswith("quantizes Linear:")
    assert lines[torchao + 1].strip() == "int8 (8), int4 (4), w8a8 (8), fp8 (8)"
    assert lines[torchao + 2].strip().startswith("wf8af8 is not offered: torchao's float8")
    ort = next(i for i, line in enumerate(lines) if line.startswith("  onnxruntime 1."))
    assert lines[ort].endswith(
        "quantizes Conv1d and Conv2d (w8a8 only), Linear, transformers' Conv1D; a causal LM's "
        "layers run weight-only:"
    )
    assert lines[ort + 1].strip() == "w8a8 (8), int8 (8), int4 (4)"
    refused = {line.split()[0]: line.strip() for line in lines[ort + 2 : ort + 5]}
    assert refused["int2"] == "int2 is not offered: ORT has no int2 kernel on a CPU"
    assert set(refused) == {"int2", "fp8", "w4a8"}


@pytest.mark.parametrize(
    ("model", "expected"),
    [("hf:some/llama", ("int8", "int4")), ("smollm2-135m", ("int8", "int4")),
     ("resnet18", ("w8a8", "int8", "int4", "float"))],
)  # fmt: skip
def test_onnxruntime_default_bits_run_a_causal_lm_weight_only(
    model: str, expected: tuple[str, ...]
) -> None:
    from quide_search.cli import build_parser
    from quide_search.cli._options import config_from_args

    _, subs = build_parser()
    args = subs["run"].parse_args(
        ["--model", model, "--backend", "onnxruntime", "--device", "cpu"]
    )
    assert config_from_args(args).bits == expected
