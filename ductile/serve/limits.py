"""Open files at boot: raise the soft ``RLIMIT_NOFILE`` to the hard limit, and size the
API's connection cap so idle sockets can never take the descriptors SQLite and the plugins'
pipes need.

Why: the default soft limit is 1 024. One thousand idle connections from a local user were
enough for ``accept`` and then SQLite to fail with "Too many open files", and a job that
finished meanwhile could not be recorded. systemd's unit sets ``LimitNOFILE=`` (see
``deploy/unit.py``); the gateway takes what it is given, keeps a reserve, and says when the
configured ``api.max_connections`` does not fit.

``plan_nofile`` is the decision (pure, table-tested); ``raise_nofile`` the one OS call.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

NOFILE_CEILING = 1 << 20        # what "unlimited" means here (Linux caps it at fs.nr_open anyway)
RESERVE_BASE = 128              # SQLite pool, the listener, the log, the vault, cgroup files...
RESERVE_PER_WORKER = 16         # each running job: pipes, the trampoline, pidfds, cgroup files


@dataclass(frozen=True)
class NofilePlan:
    soft_before: int
    hard: int
    soft: int               # the soft limit to run with
    connections: int        # the API's effective connection cap
    note: str = ""          # why connections is below api.max_connections, with the fix


def reserve(workers: int) -> int:
    return RESERVE_BASE + RESERVE_PER_WORKER * workers


def plan_nofile(soft: int, hard: int, *, max_connections: int, workers: int) -> NofilePlan:
    """Raise soft to hard; cap connections at what is left after the reserve."""
    target = NOFILE_CEILING if hard == resource.RLIM_INFINITY or hard < 0 else hard
    room = target - reserve(workers)
    connections = max(1, min(max_connections, room))
    note = ""
    if connections < max_connections:
        note = (f"api.max_connections {max_connections} does not fit under the open-file limit {target} "
                f"(reserving {reserve(workers)} for the gateway); using {connections}. Raise LimitNOFILE= "
                "in the unit (or ulimit -n) or lower api.max_connections")
    return NofilePlan(soft, hard, target, connections, note)


def raise_nofile(*, max_connections: int, workers: int) -> NofilePlan:
    """The edge: read the limits, raise soft to the plan, return the plan."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    plan = plan_nofile(soft, hard, max_connections=max_connections, workers=workers)
    if plan.soft != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (plan.soft, hard))
        except (ValueError, OSError):  # a kernel cap below the hard limit (fs.nr_open): keep what we have
            kept = plan_nofile(soft, soft, max_connections=max_connections, workers=workers)
            return NofilePlan(soft, hard, soft, kept.connections, kept.note)
    return plan
