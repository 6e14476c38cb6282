#!/usr/bin/env python3
"""Measure, side by side in one run, what privilege separation and attestation cost per job.

    sudo .venv/bin/python bench/spawn_and_attest.py [N]

Prints medians and ratios: bare spawn of /bin/true vs the confined spawn path (drop +
env -C trampoline + pipes), and the keyed BLAKE2b fingerprint of entrypoints of several
sizes relative to one confined spawn. Needs root for the dropped spawns.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

from ductile.config.model import ServiceConfig
from ductile.privsep.accounts import ResolvedAccount
from ductile.privsep.fingerprint import keyed_hash
from ductile.privsep.spawnspec import build_spawn_spec
from ductile.runtime.spawn import spawn

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200
UID = 61990


def median_ms(fn, n: int = N) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("run as root: the confined spawn drops to a numeric uid")
    base = tempfile.mkdtemp(dir="/tmp")
    os.chmod(base, 0o711)
    state = os.path.join(base, "acct")
    os.mkdir(state, 0o700)
    os.chown(state, UID, UID)
    spec = build_spawn_spec(ResolvedAccount("bench", UID, UID, state, "granted"), "/bin/true", ServiceConfig(),
                            {"PATH": "/usr/bin:/bin"}, timeout=10, unconfined_workdir="/")
    bare = median_ms(lambda: subprocess.run(["/bin/true"], stdin=subprocess.DEVNULL))
    popen_drop = median_ms(lambda: subprocess.run(["/bin/true"], user=UID, group=UID, extra_groups=[],
                                                  stdin=subprocess.DEVNULL))
    confined = median_ms(lambda: spawn(spec, b"{}\n"))
    print(f"{'spawn of /bin/true':<44}{'median ms':>10}{'x bare':>9}")
    for label, v in (("bare subprocess.run", bare), ("subprocess.run dropped (user/group/groups)", popen_drop),
                     ("ductile confined spawn (drop, env -C, pipes)", confined)):
        print(f"{label:<44}{v:>10.2f}{v / bare:>9.1f}")
    print()
    key = os.urandom(32)
    print(f"{'keyed BLAKE2b of an entrypoint':<44}{'median ms':>10}{'x spawn':>9}")
    for size in (4 << 10, 1 << 20, 50 << 20):
        data = os.urandom(size)
        v = median_ms(lambda: keyed_hash(key, data), n=max(5, N // 20 if size > 1 << 20 else N))
        print(f"{f'{size >> 10} KiB':<44}{v:>10.3f}{v / confined:>9.3f}")
    subprocess.run(["rm", "-rf", base])


if __name__ == "__main__":
    main()
