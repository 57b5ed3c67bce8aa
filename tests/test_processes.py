"""processes.py: a stop that lands while a step must not be cut in half acts once the step is done."""
import signal

import pytest

from optimstudy.processes import interrupted_by_signals, stops_deferred


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_stop_inside_stops_deferred_raises_at_its_end_and_not_before(sig):
    finished = []
    with interrupted_by_signals(), pytest.raises(KeyboardInterrupt):
        with stops_deferred():
            signal.raise_signal(sig)  # as `kill` or Ctrl-C would, half way through the step
            finished.append("the rest of the step")
        finished.append("after the step")  # never: the stop acts at the step's end
    assert finished == ["the rest of the step"]


def test_stops_deferred_gives_back_the_handlers_it_found_and_defers_nothing_when_no_stop_comes():
    with interrupted_by_signals():
        before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        with stops_deferred():
            assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
        assert {sig: signal.getsignal(sig) for sig in before} == before


def test_an_ignored_signal_stays_ignored_when_deferred():
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with stops_deferred():
            signal.raise_signal(signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN  # given back, and nothing raised
    finally:
        signal.signal(signal.SIGHUP, previous)
