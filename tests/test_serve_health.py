"""``degraded`` and its reasons, and a log that says each cause once, with a count."""

from __future__ import annotations

import logging

import pytest

from ductile.serve.health import Health, Problem, summarize
from ductile.serve.settle import DEFER_MAX, defer_delay


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("problems,draining,status", [
    ((), False, "ok"),
    ((Problem("state:disk_full", "m", "f", 1.0, 3),), False, "degraded"),
    ((), True, "draining"),
    ((Problem("state:disk_full", "m", "f", 1.0, 3),), True, "draining"),
])
def test_summarize_table(problems: tuple[Problem, ...], draining: bool, status: str) -> None:
    summary = summarize(problems, draining=draining)
    assert summary.status == status and summary.reasons == problems
    assert summary.as_dict()["degraded"] == [p.as_dict() for p in problems]


def test_one_cause_is_logged_once_then_once_a_minute_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    health = Health(clock=clock, log_every=60)
    logger = logging.getLogger("test.health")
    with caplog.at_level(logging.INFO, logger="test.health"):
        for _ in range(63):  # e.g. claims failing every 0.1 s for 6 s
            health.report(logger, "state:disk_full", "cannot claim a job: disk full", "df -h /x")
            clock.now += 0.1
        health.report(logger, "state:read_only", "refused a trigger: read-only", "mount -o remount,rw /x")
        clock.now += 60
        health.report(logger, "state:disk_full", "cannot claim a job: disk full", "df -h /x")
        assert health.summary().status == "degraded"
        [p] = [p for p in health.problems() if p.key == "state:disk_full"]
        assert p.count == 64 and p.since == 1000.0
        gone = health.resolve(logger, "state:")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "degraded: cannot claim a job: disk full"
    assert messages[1] == "degraded: refused a trigger: read-only"
    assert messages[2].startswith("degraded: cannot claim a job: disk full (63 times in the last")
    assert sorted(m.split(" after")[0] for m in messages[3:]) == ["recovered: state:disk_full",
                                                                   "recovered: state:read_only"]
    assert len(messages) == 5 and {p.key for p in gone} == {"state:disk_full", "state:read_only"}
    assert health.summary().status == "ok"


def test_a_deferred_job_backs_off_to_a_minute() -> None:
    delays = [defer_delay(n, 0.0) for n in range(1, 12)]
    assert delays[0] == 1.0 and delays == sorted(delays) and delays[-1] == DEFER_MAX
