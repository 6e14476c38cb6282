#!/usr/bin/env python3
"""Boot to ready: ``ductile serve`` with 1 and with 100 locked plugins, side by side, from
the exec until ``/healthz`` answers (config, discovery and trust checks of every plugin
tree, state database with quick_check, boot gate, reconcile, vault, listener). Beside it,
``plugin lock --all`` over the same 100 plugins: the keyed hashes of every file, which
serve then re-checks per spawn.

    sudo .venv/bin/python bench/boot.py [ROUNDS]
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, TRIVIAL_SH, World, alternate, destroy, machine, make_world, median, need_root, table  # noqa: E402


def lock_all(world: World) -> float:
    start = time.perf_counter()
    preview = subprocess.run([PY, "-m", "ductile", "plugin", "lock", "--all", "--config", str(world.etc)],
                             capture_output=True, text=True, check=True)
    code = re.search(r"confirmation code: (\w+)", preview.stdout)
    assert code, preview.stdout
    subprocess.run([PY, "-m", "ductile", "plugin", "lock", "--all", code.group(1), "--config", str(world.etc)],
                   capture_output=True, check=True)
    return time.perf_counter() - start


def boot(world: World) -> float:
    start = time.perf_counter()
    world.serve()
    elapsed = time.perf_counter() - start
    world.stop()
    return elapsed


def main() -> None:
    need_root()
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 5
    one = make_world({"p000": TRIVIAL_SH})
    many = make_world({f"p{i:03d}": TRIVIAL_SH for i in range(100)})
    try:
        locks = alternate(1, {"1": lambda: lock_all(one), "100": lambda: lock_all(many)})
        boots = alternate(rounds, {"1": lambda: boot(one), "100": lambda: boot(many)})
    finally:
        destroy(one)
        destroy(many)
    table(f"boot to ready, enforce posture (median of {rounds}, alternated)", ["plugins (locked)", "boot s",
                                                                                "plugin lock --all s"],
          [[n, f"{median(boots[n]):.3f}", f"{locks[n][0]:.3f}"] for n in ("1", "100")])
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
