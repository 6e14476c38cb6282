#!/usr/bin/env python3
"""What each layer of the wall costs per job, measured side by side in one run.

    sudo .venv/bin/python bench/spawn_and_attest.py [N]

Rows (median of N rounds; in each round every row runs once, in turn): a bare
``subprocess.run`` of /bin/true; the spawn as it was before containment (drop + ``env -C``
+ pipes, its own process group); ductile's spawn edge (new session, the trampoline's start
handshake) alone, in sweep mode (the account lock; nothing left, so no kill helper), in
cgroup mode (a cgroup per job), and in cgroup mode under the plugin's Landlock ruleset
(the kernel ruleset kept between jobs, a fresh domain each); and the kill helper a job pays
when it may have left processes. Then the keyed BLAKE2b of entrypoints of several sizes,
relative to one confined spawn. Needs root (the drop, the cgroup).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import UID, alternate, machine, median, need_root, table  # noqa: E402

from ductile.config.model import ServiceConfig  # noqa: E402
from ductile.privsep import cgroup, kernel, landlock, landlock_linux  # noqa: E402
from ductile.privsep.accounts import ResolvedAccount  # noqa: E402
from ductile.privsep.containment import CgroupPlan  # noqa: E402
from ductile.privsep.fingerprint import keyed_hash  # noqa: E402
from ductile.privsep.spawnspec import Confinement, SpawnSpec, build_spawn_spec  # noqa: E402
from ductile.runtime import jobcontain  # noqa: E402
from ductile.runtime.spawn import spawn  # noqa: E402

CGROUP2 = "/sys/fs/cgroup/unified" if os.path.isfile("/sys/fs/cgroup/unified/cgroup.procs") else "/sys/fs/cgroup"


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    return run


def before_containment(state: str) -> None:
    """The spawn as it was: drop, env -C, pipes, own process group; no session, no handshake."""
    p = subprocess.Popen(["/usr/bin/env", "-C", state, "--", "/bin/true"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, user=UID, group=UID, extra_groups=[],
                         process_group=0, umask=0o077, close_fds=True, env={"PATH": "/usr/bin:/bin"})
    p.communicate(b"{}\n")


def confined_spec(state: str, conf: Confinement) -> SpawnSpec:
    return build_spawn_spec(ResolvedAccount("bench", UID, UID, state, "granted"), "/bin/true", ServiceConfig(), {},
                            timeout=10, unconfined_workdir="/", confinement=conf)


def main() -> None:
    need_root()
    n = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 200
    kernel.set_child_subreaper()  # as plugin run, serve and account verify are
    base = tempfile.mkdtemp(prefix="ductile-bench-", dir="/tmp")
    os.chmod(base, 0o711)
    state = os.path.join(base, "acct")
    os.mkdir(state, 0o700)
    os.chown(state, UID, UID)
    locks = os.path.join(base, "locks")
    os.mkdir(locks, 0o700)
    lock = os.path.join(locks, f"uid-{UID}.lock")
    cg_base = os.path.join(CGROUP2, f"ductile-bench-{os.getpid()}")
    os.mkdir(cg_base)
    instance = cgroup.prepare(CgroupPlan(True, base=cg_base))
    abi = landlock_linux.abi()
    ruleset = landlock.build_ruleset(abi, landlock.PluginFacts("/usr/bin", "/usr"), state, ["/usr/bin", "/bin"], None,
                                     None, os.path.exists)
    plain = confined_spec(state, Confinement(path="/usr/bin:/bin"))
    sweep = confined_spec(state, Confinement(path="/usr/bin:/bin", lock_path=lock))
    cgmode = confined_spec(state, Confinement(path="/usr/bin:/bin", cgroup_parent=instance.path, lock_path=lock))
    walled = confined_spec(state, Confinement(path="/usr/bin:/bin", cgroup_parent=instance.path, lock_path=lock,
                                              landlock=ruleset))
    rows = {
        "bare subprocess.run (no drop)": timed(lambda: subprocess.run(["/bin/true"], stdin=subprocess.DEVNULL)),
        "before containment (drop, env -C, pipes)": timed(lambda: before_containment(state)),
        "spawn edge: session + start handshake": timed(lambda: spawn(plain, b"{}\n")),
        "+ sweep mode (account lock, nothing left)": timed(lambda: spawn(sweep, b"{}\n")),
        "+ cgroup mode (a cgroup per job)": timed(lambda: spawn(cgmode, b"{}\n")),
        f"+ cgroup mode + Landlock ABI {abi} ruleset": timed(lambda: spawn(walled, b"{}\n") if abi else None),
        "kill helper (a job that may have left processes)": timed(lambda: jobcontain.sweep_account(UID, UID,
                                                                                                    count=False)),
    }
    try:
        for fn in rows.values():
            fn()  # warm up: page cache, the kernel ruleset
        samples = alternate(n, rows)
    finally:
        instance.close()
        cgroup.kill_tree(cg_base)
        subprocess.run(["rm", "-rf", base])
    ms = {k: median(v) * 1000 for k, v in samples.items()}
    bare, before = ms["bare subprocess.run (no drop)"], ms["before containment (drop, env -C, pipes)"]
    table(f"per-job cost of each layer, spawn of /bin/true (median of {n}, alternated)",
          ["spawn of /bin/true", "median ms", "x bare", "+ms vs before"],
          [[k, f"{v:.2f}", f"{v / bare:.1f}", f"{v - before:+.2f}"] for k, v in ms.items()])
    confined = ms["spawn edge: session + start handshake"]
    key = os.urandom(32)
    hashes = {f"{size >> 10} KiB": (lambda data=os.urandom(size): keyed_hash(key, data))
              for size in (4 << 10, 1 << 20, 50 << 20)}
    hashed = alternate(max(5, n // 20), {k: timed(fn) for k, fn in hashes.items()})
    table("keyed BLAKE2b of an entrypoint (per job, relative to one confined spawn)", ["size", "median ms", "x spawn"],
          [[k, f"{median(v) * 1000:.3f}", f"{median(v) * 1000 / confined:.3f}"] for k, v in hashed.items()])
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
