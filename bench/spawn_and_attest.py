#!/usr/bin/env python3
"""Measure, side by side in one run, what privilege separation, containment and
attestation cost per job.

    sudo .venv/bin/python bench/spawn_and_attest.py [N]

Prints medians and ratios: bare spawn of /bin/true; the spawn as it was before containment
(drop + ``env -C`` + pipes, its own process group); ductile's confined spawn today (new
session, the trampoline's start handshake) alone, with the per-account lock and sweep (sweep
mode: the kill helper runs only when the job may have left processes, so it has its own row),
with a cgroup per job (cgroup mode: mkdir, place, cgroup.kill, rmdir), and with the Landlock
ruleset applied from its spawning thread; and the
keyed BLAKE2b fingerprint of entrypoints of several sizes relative to one confined spawn.
Needs root for the dropped spawns and the cgroup.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

from ductile.config.model import ServiceConfig
from ductile.privsep import cgroup, kernel, landlock, landlock_linux
from ductile.privsep.accounts import ResolvedAccount
from ductile.privsep.containment import CgroupPlan
from ductile.privsep.fingerprint import keyed_hash
from ductile.privsep.spawnspec import Confinement, build_spawn_spec
from ductile.runtime import jobcontain
from ductile.runtime.spawn import spawn

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200
UID = int(os.environ.get("BENCH_UID", "62590"))
CGROUP2 = "/sys/fs/cgroup/unified" if os.path.isfile("/sys/fs/cgroup/unified/cgroup.procs") else "/sys/fs/cgroup"


def median_ms(fn, n: int = N) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm up
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def before_containment(state: str) -> None:
    """The spawn as it was: drop, env -C, pipes, own process group; no session, no handshake."""
    p = subprocess.Popen(["/usr/bin/env", "-C", state, "--", "/bin/true"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, user=UID, group=UID, extra_groups=[],
                         process_group=0, umask=0o077, close_fds=True, env={"PATH": "/usr/bin:/bin"})
    p.communicate(b"{}\n")


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("run as root: the confined spawn drops to a numeric uid")
    kernel.set_child_subreaper()  # as plugin run, serve and account verify are
    base = tempfile.mkdtemp(dir="/tmp")
    os.chmod(base, 0o711)
    state = os.path.join(base, "acct")
    os.mkdir(state, 0o700)
    os.chown(state, UID, UID)
    locks = os.path.join(base, "locks")
    os.mkdir(locks, 0o700)
    cg_base = os.path.join(CGROUP2, f"ductile-bench-{os.getpid()}")
    os.mkdir(cg_base)
    instance = cgroup.prepare(CgroupPlan(True, base=cg_base))
    resolved = ResolvedAccount("bench", UID, UID, state, "granted")

    def spec(conf: Confinement):  # type: ignore[no-untyped-def]
        return build_spawn_spec(resolved, "/bin/true", ServiceConfig(), {}, timeout=10, unconfined_workdir="/",
                                confinement=conf)

    plain = spec(Confinement(path="/usr/bin:/bin"))
    sweep = spec(Confinement(path="/usr/bin:/bin", lock_path=os.path.join(locks, f"uid-{UID}.lock")))
    cgmode = spec(Confinement(path="/usr/bin:/bin", cgroup_parent=instance.path,
                              lock_path=os.path.join(locks, f"uid-{UID}.lock")))
    abi = landlock_linux.abi()
    ruleset = landlock.build_ruleset(abi, landlock.PluginFacts("/usr/bin", "/usr"), state, ["/usr/bin", "/bin"], None,
                                     None, os.path.exists)
    walled = spec(Confinement(path="/usr/bin:/bin", cgroup_parent=instance.path, landlock=ruleset,
                              lock_path=os.path.join(locks, f"uid-{UID}.lock")))
    try:
        rows = [
            ("bare subprocess.run", median_ms(lambda: subprocess.run(["/bin/true"], stdin=subprocess.DEVNULL))),
            ("before containment (drop, env -C, pipes)", median_ms(lambda: before_containment(state))),
            ("ductile spawn: session + handshake", median_ms(lambda: spawn(plain, b"{}\n"))),
            ("ductile spawn: sweep mode (lock + sweep)", median_ms(lambda: spawn(sweep, b"{}\n"))),
            ("ductile spawn: cgroup mode (cgroup per job)", median_ms(lambda: spawn(cgmode, b"{}\n"))),
            (f"cgroup mode + Landlock ABI {abi}", median_ms(lambda: spawn(walled, b"{}\n"))),
            ("kill helper (sweep mode, a job left processes)",
             median_ms(lambda: jobcontain.sweep_account(UID, UID, count=False))),
        ]
        bare, before = rows[0][1], rows[1][1]
        print(f"{'spawn of /bin/true':<46}{'median ms':>10}{'x bare':>8}{'+ms vs before':>15}")
        for label, v in rows:
            print(f"{label:<46}{v:>10.2f}{v / bare:>8.1f}{v - before:>15.2f}")
        confined = rows[2][1]
        print()
        key = os.urandom(32)
        print(f"{'keyed BLAKE2b of an entrypoint':<46}{'median ms':>10}{'x spawn':>8}")
        for size in (4 << 10, 1 << 20, 50 << 20):
            data = os.urandom(size)
            v = median_ms(lambda: keyed_hash(key, data), n=max(5, N // 20 if size > 1 << 20 else N))
            print(f"{f'{size >> 10} KiB':<46}{v:>10.3f}{v / confined:>8.3f}")
    finally:
        instance.close()
        cgroup.kill_tree(cg_base)
        subprocess.run(["rm", "-rf", base])


if __name__ == "__main__":
    main()
