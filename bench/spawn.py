#!/usr/bin/env python3
"""Per-job overhead of the library path: ``plugin run``'s executor (resolve, attest, vault
compose, spawn spec, confined spawn, decode) without the CLI, against a bare dropped spawn
of the same executable, side by side.

    sudo .venv/bin/python bench/spawn.py [RUNS]

The world is a confined gateway's (enforce posture, a numeric account, a vault with a
secret granted to the plugin, so compose really decrypts); the bare spawn is
``env -C state_dir -- plugin`` with user/group/extra_groups=[] and the request on stdin.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TRIVIAL_SH, UID, alternate, destroy, machine, make_world, median, need_root, table  # noqa: E402


def main() -> None:
    need_root()
    runs = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 200
    world = make_world({"sh": TRIVIAL_SH})
    try:
        from ductile.config import load_config
        from ductile.runtime.boot import boot
        from ductile.runtime.executor import Job
        from ductile.runtime.wiring import make_executor
        from ductile.state import open_state
        from ductile.vault import lifecycle
        from ductile.vault.audit import NullAuditSink
        from ductile.vault.cache import RACY_NS
        from ductile.vault.store import VaultStore

        store = VaultStore(str(world.etc / "secret" / "age.key"), str(world.base / "state" / "vault.age"))
        lifecycle.add_principal(store, "sh", NullAuditSink(), "bench")
        lifecycle.set_secret(store, "sh-token", "x" * 32, ["sh"], NullAuditSink(), "bench")
        # A steady gateway's vault was not written in the last two seconds: the cache keeps
        # nothing that young (vault/cache.py, RACY_NS), so without this pause the first two
        # seconds of runs - most of them - would measure a decrypt per job.
        time.sleep(RACY_NS / 1e9 + 0.1)
        runtime = boot(load_config(str(world.etc)))
        assert runtime.enforcing, runtime.posture_line()
        executor = make_executor(runtime, open_state(str(world.base / "state" / "ductile.db")))
        entry = str(world.base / "plugins" / "sh" / "run")
        request = json.dumps({"protocol": 2, "job_id": "x", "command": "poll", "config": {}, "state": {},
                              "payload": {}, "secrets": {"sh-token": "x" * 32}}).encode()

        def library() -> float:
            start = time.perf_counter()
            result = executor.run(Job(plugin="sh", command="poll"))
            elapsed = time.perf_counter() - start
            if result.outcome.status != "succeeded" or result.secret_names != ("sh-token",):
                raise SystemExit(f"executor: {result.outcome.reason}")
            return elapsed

        def bare() -> float:
            start = time.perf_counter()
            subprocess.run(["/usr/bin/env", "-C", str(world.state_dir), "--", entry], input=request,
                           capture_output=True, env={"PATH": "/usr/bin:/bin"}, user=UID, group=UID,
                           extra_groups=[], process_group=0, umask=0o077, check=True)
            return time.perf_counter() - start

        samples = alternate(runs, {"bare": bare, "library": library})
    finally:
        destroy(world)
    b, lib = median(samples["bare"]), median(samples["library"])
    table(f"one confined job, library path vs bare dropped spawn (median of {runs}, alternated)",
          ["path", "ms", "x bare"],
          [["bare spawn (drop, env -C, stdin)", f"{b * 1000:.2f}", "1.00"],
           ["executor.run (resolve, attest, compose, spawn, decode)", f"{lib * 1000:.2f}", f"{lib / b:.2f}"]])
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
