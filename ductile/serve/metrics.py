"""``GET /metrics``: the gateway in Prometheus text format (#15).

prometheus-client (the Prometheus project's own library) writes the exposition format and
keeps the counters and histograms thread-safe; hand-writing the format is where escaping
and type lines go wrong. The gateway keeps its own registry (never the process-global
one), so nothing a library registers globally leaks into it.

    ductile_jobs_total{plugin,command,status}     runs recorded since start: succeeded,
                                                  failed, timed_out, dead, retried
    ductile_job_duration_seconds{plugin,command}  how long each run took (histogram)
    ductile_queue_depth                           jobs waiting, retries included
    ductile_jobs_running                          jobs running in this gateway
    ductile_breaker_state{plugin,state}           1 for the state each known breaker is in
    ductile_breaker_failures{plugin}              consecutive failed scheduled runs
    ductile_posture{posture} / ductile_containment{mode}   1 for the one in force
    ductile_reloads_total{result}                 ok | failed | restart_required
    ductile_reload_generation                     1 at boot, +1 per successful reload
    ductile_last_reload_success                   1 / 0 (absent before the first reload)
    ductile_build_info{version}                   1

Labels are bounded by the config (plugins, commands) and fixed sets (statuses, states):
nothing a client or a plugin sends becomes a label. Queue depth, breakers and the rest
are read when scraped, through ``opsfacts``, the same functions ``/healthz`` and
``system status`` use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ductile import __version__

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
BREAKER_STATES = ("closed", "open", "half_open")
POSTURES = ("enforce", "unconfined")
MODES = ("cgroup", "sweep")


class _Live(Collector):
    """Gauges read from the running gateway at scrape time."""

    def __init__(self, facts: Callable[[], dict[str, Any]]) -> None:
        self.facts = facts

    def collect(self) -> Iterator[Metric]:
        f = self.facts()
        depth = GaugeMetricFamily("ductile_queue_depth", "Jobs waiting to run, retries not yet due included.")
        if f.get("queue_depth") is not None:
            depth.add_metric([], f["queue_depth"])
        yield depth
        yield GaugeMetricFamily("ductile_jobs_running", "Jobs running in this gateway.", value=f.get("running", 0))
        state = GaugeMetricFamily("ductile_breaker_state", "1 for the state a plugin's breaker is in.",
                                  labels=["plugin", "state"])
        failures = GaugeMetricFamily("ductile_breaker_failures", "Consecutive failed scheduled runs of a plugin.",
                                     labels=["plugin"])
        for b in f.get("breakers", []):
            for s in BREAKER_STATES:
                state.add_metric([b["plugin"], s], 1.0 if b["state"] == s else 0.0)
            failures.add_metric([b["plugin"]], b["failures"])
        yield state
        yield failures
        posture = GaugeMetricFamily("ductile_posture", "1 for the posture the boot gate chose.", labels=["posture"])
        for p in POSTURES:
            posture.add_metric([p], 1.0 if f.get("posture") == p else 0.0)
        yield posture
        mode = GaugeMetricFamily("ductile_containment", "1 for the containment mode jobs run under.", labels=["mode"])
        for m in MODES:
            mode.add_metric([m], 1.0 if f.get("containment") == m else 0.0)
        yield mode
        reloads = f.get("reloads") or {}
        total = CounterMetricFamily("ductile_reloads", "Reloads attempted, by result.", labels=["result"])
        for result, n in sorted((reloads.get("counts") or {}).items()):
            total.add_metric([result], n)
        yield total
        yield GaugeMetricFamily("ductile_reload_generation", "1 at boot, one more per successful reload.",
                                value=f.get("generation", 1))
        last = reloads.get("last")
        if last is not None:
            yield GaugeMetricFamily("ductile_last_reload_success", "1 when the last reload succeeded, else 0.",
                                    value=1.0 if last.get("reloaded") else 0.0)
        info = GaugeMetricFamily("ductile_build_info", "The running ductile.", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info


class Metrics:
    def __init__(self, facts: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.jobs = Counter("ductile_jobs", "Job runs recorded since the gateway started, by final status "
                            "(retried: the run failed and the job was queued again).",
                            ["plugin", "command", "status"], registry=self.registry)
        self.duration = Histogram("ductile_job_duration_seconds", "How long each job run took.",
                                  ["plugin", "command"], buckets=BUCKETS, registry=self.registry)
        self.registry.register(_Live(facts))

    def settled(self, plugin: str, command: str, status: str, seconds: float) -> None:
        self.jobs.labels(plugin, command, status).inc()
        self.duration.labels(plugin, command).observe(max(0.0, seconds))

    def render(self) -> bytes:
        return generate_latest(self.registry)
