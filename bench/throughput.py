#!/usr/bin/env python3
"""Throughput: ``serve`` against the bare spawn ceiling, side by side.

    sudo .venv/bin/python bench/throughput.py [JOBS] [ROUNDS] [--profile] [--baseline REV]

serve (``max_workers: 2``, enforce posture, plugins dropped to a numeric account) gets JOBS
jobs of a trivial plugin through its API from 8 concurrent clients; the clock runs from the
first POST until the last job is finished. The ceiling is the same JOBS spawns of the same
plugin done bare: 2 at a time, ``user=``/``group=``/``extra_groups=[]``, ``env -C
state_dir``, the request on stdin. Rounds alternate serve and bare; medians are printed,
with the gateway's peak RSS. Done for a ``#!/bin/sh`` plugin and a stdlib Python plugin.
``--profile`` adds a py-spy sample of the gateway during one more serve burst.
``--baseline REV`` runs a second gateway from git revision REV (say ``main``) in the same
rounds, so a change is measured against what it changes, side by side; ``--try NAME=DIR``
adds a gateway run from the source tree DIR (laid out as ``export_tree`` does).
"""

from __future__ import annotations

import http.client
import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    TRIVIAL_PY,
    TRIVIAL_SH,
    UID,
    World,
    alternate,
    destroy,
    export_tree,
    machine,
    make_world,
    median,
    need_root,
    peak_rss,
    profile,
    summarize_profile,
    table,
)

CLIENTS = 8
STUCK = 300.0  # seconds: a burst that has not finished by then never will (a job left running)


def burst(world: World, plugin: str, jobs: int) -> float:
    """Seconds from the first POST of ``jobs`` jobs (8 clients) until all are finished."""
    db = sqlite3.connect(f"file:{world.base / 'state' / 'ductile.db'}?mode=ro", uri=True, timeout=30)
    before = db.execute("SELECT count(*) FROM jobs WHERE status = 'succeeded'").fetchone()[0]
    per = [jobs // CLIENTS + (1 if i < jobs % CLIENTS else 0) for i in range(CLIENTS)]

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", world.port, timeout=60)
        for _ in range(n):
            conn.request("POST", f"/plugin/{plugin}/poll", body=b"{}",
                         headers={"Authorization": f"Bearer {world.token}", "Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 202:
                raise SystemExit(f"trigger answered {resp.status}")
        conn.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, per))
    while db.execute("SELECT count(*) FROM jobs WHERE status = 'succeeded'").fetchone()[0] < before + jobs:
        if db.execute("SELECT count(*) FROM jobs WHERE status IN ('failed', 'dead')").fetchone()[0]:
            raise SystemExit(f"a job failed: see {world.base / 'serve.log'}")
        if time.perf_counter() - start > STUCK:
            raise SystemExit(f"jobs still unfinished after {STUCK:.0f}s: see {world.base / 'serve.log'}")
        time.sleep(0.002)
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


def bare(world: World, plugin: str, jobs: int) -> float:
    """The same spawns with no gateway: the ceiling serve is measured against."""
    entry = str(world.base / "plugins" / plugin / "run")
    request = json.dumps({"protocol": 2, "job_id": "x", "command": "poll", "config": {}, "state": {},
                          "payload": {}}).encode()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(world.state_dir)}

    def one(_: int) -> None:
        proc = subprocess.run(["/usr/bin/env", "-C", str(world.state_dir), "--", entry], input=request,
                              capture_output=True, env=env, user=world.uid, group=world.uid, extra_groups=[],
                              process_group=0, umask=0o077)
        if proc.returncode != 0:
            raise SystemExit(f"bare spawn failed: {proc.stderr.decode()}")

    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, range(jobs)))
    return time.perf_counter() - start


def options(argv: list[str]) -> tuple[int, int, bool, str | None, list[tuple[str, Path]]]:
    """JOBS ROUNDS [--profile] [--baseline REV] [--try NAME=DIR ...]"""
    rest, baseline, experiments = [], None, []
    it = iter(argv)
    for a in it:
        if a in ("--baseline", "--try"):
            value = next(it, None)
            if value is None:
                sys.exit(f"{a} needs a value")
            if a == "--baseline":
                baseline = value
            else:
                name, _, tree = value.partition("=")
                experiments.append((name, Path(tree)))
        elif not a.startswith("--"):
            rest.append(a)
    return (int(rest[0]) if rest else 300, int(rest[1]) if len(rest) > 1 else 3, "--profile" in argv, baseline,
            experiments)


def main() -> None:
    need_root()
    jobs, rounds, want_profile, baseline, experiments = options(sys.argv[1:])
    plugins = {"sh": TRIVIAL_SH, "py": TRIVIAL_PY}
    worlds = {"serve": make_world(plugins)}
    if baseline is not None:
        worlds[baseline] = make_world(plugins, uid=UID + 1)
        worlds[baseline].source = export_tree(baseline)
    for name, tree in experiments:
        worlds[name] = make_world(plugins, uid=UID + 2 + len(worlds))
        worlds[name].source = tree
    world = worlds["serve"]
    rows = []
    try:
        for w in worlds.values():
            w.serve()
            burst(w, "sh", 20)  # warm up: first spawns, page cache, connections
        assert world.proc is not None
        for plugin, label in (("sh", "#!/bin/sh plugin"), ("py", "stdlib Python plugin")):
            runs = {"bare": lambda: bare(world, plugin, jobs)}
            for name, w in worlds.items():
                runs[name] = lambda w=w: burst(w, plugin, jobs)  # type: ignore[misc]
            with peak_rss(world.proc.pid) as peak:
                samples = alternate(rounds, runs)
            b = median(samples["bare"])
            for name in worlds:
                s = median(samples[name])
                who = label if name == "serve" else f"  {name} (baseline)" if name == baseline else f"  {name}"
                rows.append([who, jobs, round(jobs / s, 1), round(jobs / b, 1), round(s / b, 2),
                             f"{peak[0] / 2**20:.0f} MiB" if name == "serve" else "",
                             " ".join(f"{x / y:.2f}" for x, y in zip(samples[name], samples["bare"]))])
        if want_profile:
            out = world.base / "profile.txt"
            spy = threading.Thread(target=profile, args=(world.proc.pid, 4, out))
            spy.start()
            time.sleep(0.5)
            burst(world, "sh", jobs * 2)
            spy.join()
            if out.exists():
                table("where serve's time goes (share of samples, inclusive)", ["function", "share"],
                      [[f, f"{share:.0%}"] for f, share in summarize_profile(out)])
            else:
                print("\n(py-spy is not installed: `make bench` installs it into the venv)")
    finally:
        for name, w in worlds.items():
            destroy(w)
            if w.source is not None and name == baseline:
                shutil.rmtree(w.source, ignore_errors=True)
    table(f"throughput: {jobs} jobs, 8 API clients, max_workers 2, enforce (median of {rounds}, alternated)",
          ["plugin", "jobs", "serve jobs/s", "bare spawns/s", "serve/bare", "gateway peak RSS", "each round"], rows)
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
