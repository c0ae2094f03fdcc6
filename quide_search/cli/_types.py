"""argparse value types: each turns one flag's text into a checked value, or says what must
hold (argparse prints it and exits 2)."""

from __future__ import annotations

import argparse

__all__ = ["count", "gate_fraction", "port_number", "positive_int", "seed", "study_name"]


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an integer >= {low}, but got {text!r}"
        ) from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be an integer >= {low}, but got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def study_name(text: str) -> str:
    """argparse type: a study name (the one rule of ``config.check_study_name``)."""
    from quide_search.config import check_study_name
    from quide_search.errors import ConfigError

    try:
        return check_study_name(text, flag="name")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("name ")) from None


def seed(text: str) -> int:
    """argparse type: a sampler seed in [0, 2**32 - 1]."""
    from quide_search.config import MAX_SEED

    value = _int_at_least(text, 0)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {MAX_SEED}], but got {value}")
    return value


def sample_count(text: str) -> int:
    """argparse type: a split's sample cap, 1 to :data:`~quide_search.protocol.MAX_SAMPLES`."""
    from quide_search.protocol import MAX_SAMPLES

    value = _int_at_least(text, 1)
    if value > MAX_SAMPLES:
        raise argparse.ArgumentTypeError(
            f"must be an integer in [1, {MAX_SAMPLES}], but got {value}"
        )
    return value


def port_number(text: str) -> int:
    """argparse type: a TCP port, 1-65535."""
    value = _int_at_least(text, 1)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port in 1-65535, but got {value}")
    return value


def count(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def gate_fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], but got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], but got {value}")
    return value
