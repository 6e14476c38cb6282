"""What every bench script shares: medians of runs taken side by side (alternating the
compared commands, so a machine that gets busier mid-run weighs on both alike), small
tables, throwaway worlds under /tmp, and a sampling profile of a running gateway.

Nothing here asserts a number: the scripts print what they measured.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PY = sys.executable
UID = int(os.environ.get("DUCTILE_BENCH_UID", "61990"))  # a numeric account with no passwd entry


def median(values: list[float]) -> float:
    return statistics.median(values)


def alternate(rounds: int, runs: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Run each callable once per round, in turn, ``rounds`` times; the samples per name."""
    out: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            out[name].append(run())
    return out


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    cells = [header] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, row in enumerate(cells):
        print("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def machine() -> str:
    load = os.getloadavg()
    return (f"{os.cpu_count()} CPU(s), load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, Python "
            f"{sys.version.split()[0]}, {os.uname().release}")


def need_root() -> None:
    if os.geteuid() != 0:
        sys.exit(f"{sys.argv[0]}: run as root: the jobs drop to a numeric account")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


TRIVIAL_SH = "#!/bin/sh\ncat >/dev/null\nprintf '{\"status\": \"ok\", \"result\": {}}\\n'\n"
TRIVIAL_PY = textwrap.dedent("""\
    #!/usr/bin/python3
    import json, sys
    json.load(sys.stdin)
    json.dump({"status": "ok", "result": {}}, sys.stdout)
""")


@dataclass
class World:
    """A confined gateway's world: config, vault with an API token, one account, plugins."""

    base: Path
    port: int
    token: str
    state_dir: Path
    plugins: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    uid: int = UID
    source: Path | None = None   # serve from this source tree (``export_tree``), not the installed one

    @property
    def etc(self) -> Path:
        return self.base / "etc"

    def serve(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k not in ("DUCTILE_DEBUG", "NOTIFY_SOCKET")}
        if self.source is not None:
            env["PYTHONPATH"] = str(self.source)
        log = open(self.base / "serve.log", "ab")
        self.proc = subprocess.Popen([PY, "-m", "ductile", "serve", "--config", str(self.etc)], stdout=log,
                                     stderr=subprocess.STDOUT, env=env, cwd="/")
        self.wait_ready()
        return self.proc

    def wait_ready(self, deadline: float = 60) -> float:
        start = time.monotonic()
        while time.monotonic() - start < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                sys.exit(f"serve exited {self.proc.returncode}: see {self.base / 'serve.log'}")
            try:
                if self.get("/healthz")[0] == 200:
                    return time.monotonic() - start
            except OSError:
                pass
            time.sleep(0.005)
        sys.exit(f"serve was not ready in {deadline}s: see {self.base / 'serve.log'}")

    def get(self, path: str) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {self.token}"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"null")
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)


def make_world(plugins: dict[str, str], *, workers: int = 2, extra: str = "", confined: bool = True,
               uid: int = UID) -> World:
    """Build a world under /tmp (0711, reachable by the account). As root with ``confined``,
    plugins run as account ``default`` (uid ``uid``); the gateway itself runs as root."""
    from ductile.vault import lifecycle
    from ductile.vault.audit import NullAuditSink
    from ductile.vault.store import VaultStore

    base = Path(tempfile.mkdtemp(prefix="ductile-bench-", dir="/tmp"))
    os.chmod(base, 0o711)
    for d, mode in (("etc", 0o700), ("etc/secret", 0o700), ("state", 0o711), ("plugins", 0o755)):
        (base / d).mkdir(mode=mode)
        os.chmod(base / d, mode)
    state_dir = base / "state" / "acct"
    state_dir.mkdir(mode=0o700)
    if confined:
        os.chown(state_dir, uid, uid)
    for name, source in plugins.items():
        d = base / "plugins" / name
        d.mkdir(mode=0o755)
        (d / "manifest.yaml").write_text(f"name: {name}\nprotocol: 2\nentrypoint: run\n"
                                         "commands: [{name: poll, type: read}]\n")
        (d / "run").write_text(source)
        os.chmod(d / "run", 0o755)
    token = "bench-token-" + os.urandom(16).hex()
    store = VaultStore(str(base / "etc" / "secret" / "age.key"), str(base / "state" / "vault.age"))
    lifecycle.init_vault(store, NullAuditSink(), "bench")
    lifecycle.set_secret(store, "api", token, [], NullAuditSink(), "bench")
    port = free_port()
    accounts = (f"accounts:\n  default: {{uid: {uid}, gid: {uid}, state_dir: {state_dir}}}\n" if confined else
                "service: {unconfined: true}\n")
    grants = "".join(f"  {n}: {{run_as: default, retry: {{max_attempts: 1}}}}\n" if confined else
                     f"  {n}: {{retry: {{max_attempts: 1}}}}\n" for n in plugins)
    (base / "etc" / "config.yaml").write_text(textwrap.dedent(f"""\
        state: {{path: ../state/ductile.db}}
        secrets: {{age_key_file: secret/age.key, vault_file: ../state/vault.age}}
        plugin_roots: [../plugins]
        api:
          listen: 127.0.0.1:{port}
          tokens: [{{name: bench, secret_ref: api, scopes: ["*"]}}]
        """) + (accounts if confined else "") + textwrap.dedent(f"""\
        service: {{max_workers: {workers}, log_level: warning{'' if confined else ', unconfined: true'}}}
        """) + "plugins:\n" + grants + extra)
    return World(base, port, token, state_dir, dict(plugins), uid=uid)


def destroy(world: World) -> None:
    world.stop()
    if os.geteuid() == 0:  # nothing of the account may outlive the bench
        subprocess.run(["/bin/kill", "-KILL", "-1"], user=world.uid, group=world.uid, extra_groups=[],
                       capture_output=True)
    shutil.rmtree(world.base, ignore_errors=True)


def export_tree(rev: str) -> Path:
    """The source of git revision ``rev`` under /tmp, laid out as installed (``commands/``
    is imported as ``ductile_commands``), for a gateway measured beside the working tree:
    ``PYTHONPATH`` puts it before the editable install. Remove it with ``shutil.rmtree``."""
    repo = Path(__file__).resolve().parent.parent
    out = Path(tempfile.mkdtemp(prefix="ductile-bench-src-", dir="/tmp"))
    os.chmod(out, 0o755)
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev, "ductile", "commands"], capture_output=True)
    if archive.returncode != 0:
        shutil.rmtree(out)
        sys.exit(f"git archive {rev}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    (out / "commands").rename(out / "ductile_commands")
    return out


@contextmanager
def peak_rss(pid: int) -> Iterator[list[int]]:
    """Sample the RSS of ``pid`` every 10 ms while the block runs; ``[peak bytes]``."""
    import threading

    import psutil

    proc, peak, stop = psutil.Process(pid), [0], threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            try:
                peak[0] = max(peak[0], proc.memory_info().rss)
            except psutil.Error:
                return

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield peak
    finally:
        stop.set()
        t.join()


def profile(pid: int, seconds: float, out: Path, *, gil: bool = False, idle: bool = False) -> Path | None:
    """A py-spy sampling profile of ``pid`` (collapsed stacks) if py-spy is installed.
    ``gil``: only the thread holding the GIL; ``idle``: waiting threads too."""
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not os.path.exists(spy):
        return None
    subprocess.run([spy, "record", "--pid", str(pid), "--duration", str(int(max(1, seconds))), "--rate", "200",
                    "--format", "raw", "--threads", "--nonblocking", *(["--gil"] if gil else []), *(["--idle"] if idle else []), "-o", str(out)], capture_output=True)
    return out if out.exists() else None


GENERIC = {"thread", "Thread._bootstrap", "Thread._bootstrap_inner", "Thread.run", "<module>"}


def summarize_profile(path: Path, top: int = 14) -> list[tuple[str, float]]:
    """Share of samples in which each function appears (inclusive), busiest first."""
    totals: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = {f.split(" (")[0] for f in stack.split(";")} - GENERIC
        for frame in frames:
            totals[frame] += n
    return [(f, c / samples) for f, c in totals.most_common(top)] if samples else []
