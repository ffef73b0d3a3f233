"""`serve`'s components start in order and stop in reverse: after a signal,
after one could not start, after one crashed (the exit code says which).
The real components run through serve in test_serve_start.py and test_e2e.py."""

from __future__ import annotations

import logging
import threading

from gateway.config import Config
from gateway.serve import STARTED_LINE, Listeners, LoopComponent, Serve, StartError


class Recorded:
    """A component that writes what happens to it into a shared list."""

    def __init__(self, name: str, events: list[str], *, fail: bool = False, crash: bool = False) -> None:
        self.name = name
        self.events = events
        self.fail = fail
        self.crashed = False
        self._crash = crash

    def start(self) -> None:
        if self.fail:
            raise StartError(f"{self.name} cannot start")
        self.events.append(f"start {self.name}")
        self.crashed = self._crash

    def stop(self) -> None:
        self.events.append(f"stop {self.name}")


def serve(names: tuple[str, ...] = ("scp", "worker", "hl7")) -> Serve:
    return Serve(Config(), names, Listeners())


def test_started_in_order_stopped_in_reverse_after_a_signal(caplog):
    events: list[str] = []
    s = serve()
    components = [Recorded("hl7", events), Recorded("worker", events), Recorded("scp", events)]
    with caplog.at_level(logging.INFO, logger="gateway.serve"):
        code = s._run_components(components, on_started=lambda: (events.append("started"), s.stopping.set()))
    assert code == 0
    assert events == ["start hl7", "start worker", "start scp", "started", "stop scp", "stop worker", "stop hl7"]
    # the start line names the SCP first, whatever the start order
    assert f"{STARTED_LINE}scp, worker, hl7" in caplog.messages
    assert caplog.messages[-1] == "gateway stopped"


def test_a_component_that_cannot_start_stops_the_started_ones_exit_1(caplog):
    events: list[str] = []
    components = [Recorded("hl7", events), Recorded("worker", events, fail=True), Recorded("scp", events)]
    with caplog.at_level(logging.INFO, logger="gateway.serve"):
        code = serve()._run_components(components, on_started=lambda: events.append("started"))
    assert code == 1
    assert events == ["start hl7", "stop hl7"]  # the SCP never accepted; no start line
    assert "worker cannot start; stopping" in caplog.messages
    assert not [m for m in caplog.messages if m.startswith(STARTED_LINE)]


def test_a_crashed_component_stops_all_exit_1(caplog):
    events: list[str] = []
    components = [Recorded("hl7", events, crash=True), Recorded("scp", events)]
    with caplog.at_level(logging.INFO, logger="gateway.serve"):
        code = serve(("scp", "hl7"))._run_components(components, on_started=None)
    assert code == 1
    assert events == ["start hl7", "start scp", "stop scp", "stop hl7"]
    assert "a component crashed; stopping" in caplog.messages
    assert caplog.messages[-1] == "gateway stopped after a component crashed"


def test_a_signal_before_start_starts_nothing():
    events: list[str] = []
    s = serve()
    s.stopping.set()
    assert s._run_components([Recorded("hl7", events), Recorded("scp", events)], on_started=None) == 0
    assert events == []


def test_loop_component_runs_until_stopped_and_reports_a_crash(caplog):
    seen: list[str] = []
    running = threading.Event()

    def loop(stop):
        seen.append("running")
        running.set()
        stop.wait(30)
        seen.append("stopped")

    ok = LoopComponent("worker", loop, wake=lambda: seen.append("woken"))
    ok.start()
    assert running.wait(30)
    ok.stop()
    assert seen == ["running", "woken", "stopped"] and not ok.crashed

    def boom(_stop):
        raise RuntimeError("boom")

    bad = LoopComponent("pacs", boom, thread_name="pacs-sender")
    with caplog.at_level(logging.ERROR, logger="gateway.serve"):
        bad.start()
        bad.stop()
    assert bad.crashed
    assert "pacs-sender thread crashed" in caplog.messages
