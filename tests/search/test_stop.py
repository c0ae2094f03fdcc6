"""The stop switch: a signal raises at once only while a plan is measured, never in storage I/O."""

from __future__ import annotations

import signal

import pytest

from quide_search.errors import Stopped
from quide_search.search.stop import StopSwitch


def test_a_stop_between_steps_is_recorded_and_raised_at_the_next_check() -> None:
    stops = StopSwitch()
    stops.check()  # nothing asked: no raise
    stops.ask(signal.SIGTERM)  # outside measuring: recorded only
    assert stops.asked and stops.signum == signal.SIGTERM
    with pytest.raises(Stopped) as raised:
        stops.check()
    assert raised.value.signum == signal.SIGTERM
    # A stop already asked stops the measurement before it starts.
    with pytest.raises(Stopped), stops.measuring():
        raise AssertionError("measured after a stop")


def test_a_stop_while_measuring_raises_at_once_but_waits_for_a_storage_write() -> None:
    stops = StopSwitch()
    written = []
    with pytest.raises(Stopped), stops.measuring():
        with stops.storage_io():
            stops.ask(signal.SIGINT)  # inside the write: recorded, not raised
            written.append("report")
        raise AssertionError("storage_io did not check on leaving")
    assert written == ["report"]
    stops = StopSwitch()
    with pytest.raises(Stopped) as raised, stops.measuring():
        stops.ask(signal.SIGINT)
        raise AssertionError("ask did not raise while measuring")
    assert raised.value.signum == signal.SIGINT
    stops.ask(signal.SIGINT)  # measuring is over: recorded, not raised
