#!/usr/bin/env python3
"""Measure, side by side in one run, what trusting and locking the *whole* plugin costs.

    sudo .venv/bin/python bench/attest_tree.py [N]

Prints medians and ratios against one confined spawn of /bin/true (the unit a job pays
anyway): the spawn-time attestation of a plugin of 1, 10 and 100 small files (whole tree,
through descriptors), the same with its python3.11 interpreter hashed cold and from the
per-process cache, and discovery's trust walk (tree, every ancestor, #! chain) per plugin.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import UID, machine, need_root  # noqa: E402

from ductile import lock  # noqa: E402
from ductile.config.model import ServiceConfig  # noqa: E402
from ductile.plugins.discovery import discover_plugins  # noqa: E402
from ductile.privsep.accounts import ResolvedAccount  # noqa: E402
from ductile.privsep.spawnspec import build_spawn_spec  # noqa: E402
from ductile.runtime.spawn import spawn  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 200


def median_ms(fn: Callable[[], object], n: int = N) -> float:
    """In-process work (hashing, a walk): no other process to alternate with."""
    fn()  # warm up
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)

def make_plugin(root: str, name: str, files: int) -> None:
    d = os.path.join(root, name)
    os.makedirs(os.path.join(d, "lib"))
    with open(os.path.join(d, "manifest.yaml"), "w") as fh:
        fh.write(f"name: {name}\nprotocol: 2\nentrypoint: run.py\ncommands: [{{name: poll, type: read}}]\n")
    with open(os.path.join(d, "run.py"), "w") as fh:
        fh.write("#!/usr/bin/python3\n" + "x = 1\n" * 100)
    os.chmod(os.path.join(d, "run.py"), 0o755)
    for i in range(files - 2):
        with open(os.path.join(d, "lib", f"m{i}.py"), "w") as fh:
            fh.write("def f():\n    return 1\n" * 50)


def main() -> None:
    need_root()
    base = tempfile.mkdtemp(prefix="ductile-bench-", dir="/tmp")
    os.chmod(base, 0o711)
    try:
        state = os.path.join(base, "acct")
        os.mkdir(state, 0o700)
        os.chown(state, UID, UID)
        root = os.path.join(base, "plugins")
        os.mkdir(root, 0o755)
        for files in (2, 10, 100):
            make_plugin(root, f"p{files}", files)
        spec = build_spawn_spec(ResolvedAccount("bench", UID, UID, state, "granted"), "/bin/true", ServiceConfig(),
                                {"PATH": "/usr/bin:/bin"}, timeout=10, unconfined_workdir="/")
        confined = median_ms(lambda: spawn(spec, b"{}\n"))
        found = discover_plugins([root], search_path="/usr/bin:/bin")
        key = os.urandom(32)
        print(f"{'per job':<52}{'median ms':>10}{'x spawn':>9}")
        print(f"{'confined spawn of /bin/true (the unit)':<52}{confined:>10.2f}{1.0:>9.2f}")
        for files in (2, 10, 100):
            plugin = found.plugins[f"p{files}"]
            tree_only = median_ms(lambda: lock.tree_digests(key, plugin))
            cached = median_ms(lambda: lock.current(key, plugin))

            def cold() -> None:
                lock._interpreter_digests.clear()
                lock.current(key, plugin)

            cold_ms = median_ms(cold, n=max(5, N // 10))
            print(f"{f'attest {files} files: tree only':<52}{tree_only:>10.3f}{tree_only / confined:>9.3f}")
            print(f"{f'attest {files} files + python3.11, cached':<52}{cached:>10.3f}{cached / confined:>9.3f}")
            print(f"{f'attest {files} files + python3.11, cold (first job)':<52}{cold_ms:>10.3f}{cold_ms / confined:>9.3f}")
        walk = median_ms(lambda: discover_plugins([root], search_path="/usr/bin:/bin"), n=max(5, N // 10)) / 3
        print(f"{'discovery trust walk, per plugin (once per boot)':<52}{walk:>10.3f}{walk / confined:>9.3f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
