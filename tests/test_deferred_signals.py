"""A signal that lands inside gradprobe's bookkeeping is delivered when the bookkeeping is done."""

from __future__ import annotations

import os
import signal

import pytest

from gradprobe.recording import deferred_signals


@pytest.fixture
def usr1_handler():
    seen: list[int] = []

    def handler(signum, frame):
        seen.append(signum)
        raise KeyboardInterrupt

    previous = deferred_signals.install(signal.SIGUSR1, handler)
    yield seen
    signal.signal(signal.SIGUSR1, previous)


def _deliver(signum: int) -> None:
    os.kill(os.getpid(), signum)
    sum(range(10_000))  # Python runs signal handlers between bytecodes of the main thread


def test_signal_outside_a_critical_section_is_handled_at_once(usr1_handler):
    with pytest.raises(KeyboardInterrupt):
        _deliver(signal.SIGUSR1)
    assert usr1_handler == [signal.SIGUSR1]


def test_signal_inside_nested_critical_sections_waits_for_the_outermost(usr1_handler):
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_signals.critical:
            with deferred_signals.critical:
                _deliver(signal.SIGUSR1)
                finished.append("inner")
            assert usr1_handler == []
            _deliver(signal.SIGUSR1)  # a second one while the first waits is folded into it
            finished.append("outer")
    assert finished == ["inner", "outer"]
    assert usr1_handler == [signal.SIGUSR1]
    assert deferred_signals.critical.depth == 0 and not deferred_signals.critical.pending


def test_a_critical_section_in_another_thread_does_not_hold_the_main_threads_signals(usr1_handler):
    import threading

    entered, release = threading.Event(), threading.Event()

    def worker():
        with deferred_signals.critical:
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=worker)
    thread.start()
    entered.wait(10)
    try:
        with pytest.raises(KeyboardInterrupt):
            _deliver(signal.SIGUSR1)
        assert usr1_handler == [signal.SIGUSR1]
    finally:
        release.set()
        thread.join()
    assert deferred_signals.critical.depth == 0
