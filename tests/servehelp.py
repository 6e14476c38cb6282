"""Run the real ``ductile serve`` as a subprocess against a throwaway world and talk to it
over loopback HTTP. No timed assertions: every wait polls a condition until a generous
deadline and fails with the gateway's log attached."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
DEADLINE = 60.0
PY = "/usr/bin/python3"  # plugins' interpreter: reachable by every account, like the examples'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], deadline: float = DEADLINE, log: Callable[[], str] | None = None,
             interval: float = 0.05) -> T:
    end = time.monotonic() + deadline
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}" + (f"\n--- serve log ---\n{log()[-6000:]}" if log else ""))
        time.sleep(interval)


def plugin(root: Path, name: str, source: str, commands: str = "[{name: poll, type: read}, {name: handle, type: read}, "
           "{name: write, type: write}]", extra: str = "") -> None:
    d = root / name
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    (d / "manifest.yaml").write_text(f"name: {name}\nprotocol: 2\nentrypoint: run\ncommands: {commands}\n{extra}")
    (d / "run").write_text(textwrap.dedent(source).lstrip())
    os.chmod(d / "run", 0o755)


ECHO = f'''\
    #!{PY}
    import json, sys
    req = json.load(sys.stdin)
    json.dump({{"status": "ok", "result": {{"payload": req["payload"], "command": req["command"], "event": req.get("event")}},
               "events": [{{"type": "echo.done", "payload": {{"said": req["payload"]}}}}],
               "logs": [{{"level": "info", "message": "echoed"}}]}}, sys.stdout)
'''

SLEEPER = f'''\
    #!{PY}
    """Sleeps long on its first run (leaving a marker), answers at once when the marker exists."""
    import json, os, sys, time
    req = json.load(sys.stdin)
    p = req["payload"]
    marker = p.get("marker")
    if marker and not os.path.exists(marker):
        open(marker, "w").write(req["job_id"])
        time.sleep(p.get("seconds", 600))
    elif not marker:
        time.sleep(p.get("seconds", 600))
    json.dump({{"status": "ok", "result": {{"woke": True}}}}, sys.stdout)
'''

BAD = f'''\
    #!{PY}
    """Misbehaves on request: garbage, truncated JSON, non-UTF-8, 10 MB, errors, or a proper answer."""
    import json, sys
    mode = json.load(sys.stdin)["payload"].get("mode")
    out = sys.stdout.buffer
    if mode == "garbage":
        out.write(b"this is not json at all\\n")
    elif mode == "truncated":
        out.write(b'{{"status": "ok", "result": {{"half": ')
    elif mode == "nonutf8":
        out.write(b'{{"status": "ok", "result": "\\xff\\xfe\\xfa"}}')
    elif mode == "exit78":
        out.write(json.dumps({{"status": "error", "error": "misconfigured"}}).encode())
        sys.stdout.flush()
        sys.exit(78)
    elif mode == "noretry":
        out.write(json.dumps({{"status": "error", "error": "gone for good", "retry": False}}).encode())
    elif mode == "error":
        out.write(json.dumps({{"status": "error", "error": "try later"}}).encode())
    elif mode == "huge":
        out.write(b'{{"status": "ok", "result": "' + b"x" * (10 * 1024 * 1024) + b'"}}')
    else:
        out.write(json.dumps({{"status": "ok", "result": "fine"}}).encode())
'''

# /bin/sh so 2,000 spawns stay cheap; appends its job id to a file in its working directory
TALLY = '''\
    #!/bin/sh
    req=$(cat)
    id=$(printf '%s' "$req" | sed -n 's/.*"job_id": *"\\([^"]*\\)".*/\\1/p')
    printf '%s\\n' "$id" >> tally.txt
    printf '{"status": "ok", "result": {"id": "%s"}}' "$id"
'''


def make_vault(etc: Path, secrets: dict[str, str]) -> None:
    """Create the world's vault holding ``secrets`` (name -> value), through the vault's own API."""
    from ductile.vault import lifecycle
    from ductile.vault.audit import NullAuditSink
    from ductile.vault.store import VaultStore

    store = VaultStore(key_file=str(etc / "secret" / "age.key"), vault_file=str(etc.parent / "state" / "vault.age"))
    lifecycle.init_vault(store, NullAuditSink(), "test")
    for name, value in secrets.items():
        lifecycle.set_secret(store, name, value, [], NullAuditSink(), "test")


@dataclass
class ServeWorld:
    base: Path
    port: int
    config_body: str
    secrets: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0
    state_extra: str = ""  # more keys of the state: mapping, e.g. "retention: {every: 2s}"

    @property
    def etc(self) -> Path:
        return self.base / "etc"

    @property
    def plugins(self) -> Path:
        return self.base / "plugins"

    @property
    def db(self) -> Path:
        return self.base / "state" / "ductile.db"

    @property
    def log_path(self) -> Path:
        return self.base / f"serve-{self.runs}.log"

    def write_config(self) -> None:
        head = textwrap.dedent(f"""\
            state: {{path: ../state/ductile.db{", " + self.state_extra if self.state_extra else ""}}}
            secrets: {{age_key_file: secret/age.key, vault_file: ../state/vault.age}}
            plugin_roots: [../plugins]
            """)
        (self.etc / "config.yaml").write_text(head + textwrap.dedent(self.config_body).replace("@PORT@", str(self.port)))

    def log(self) -> str:
        out = []
        for i in range(1, self.runs + 1):
            p = self.base / f"serve-{i}.log"
            if p.exists():
                out.append(p.read_text(errors="replace"))
        return "\n".join(out)

    def start(self, *, wait: bool = True, extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None,
              prefix: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        self.runs += 1
        full_env = {k: v for k, v in os.environ.items() if k not in ("DUCTILE_DEBUG", "NOTIFY_SOCKET", "DUCTILE_LISTEN")}
        full_env.update({"NO_COLOR": "1", **(env or {})})
        with open(self.log_path, "wb") as fh:
            self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "ductile", "serve", "--config", str(self.etc),
                                          *extra_args], stdout=fh, stderr=subprocess.STDOUT, env=full_env, cwd="/")
        if wait:
            self.wait_ready()
        return self.proc

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode} before it was ready:\n{self.log()[-4000:]}")
            try:
                return self.request("GET", "/healthz")[0] == 200
            except OSError:
                return False

        wait_for("serve to answer /healthz", ready, log=self.log)

    def request(self, method: str, path: str, body: bytes | dict[str, Any] | None = None, token: str | None = None,
                headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            hdrs = dict(headers or {})
            if token is not None:
                hdrs["Authorization"] = f"Bearer {token}"
            data = json.dumps(body).encode() if isinstance(body, dict) else body
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
            try:
                return resp.status, json.loads(raw) if raw else None
            except ValueError:
                return resp.status, raw.decode(errors="replace")
        finally:
            conn.close()

    def trigger(self, plugin: str, command: str, payload: dict[str, Any], token: str) -> str:
        status, body = self.request("POST", f"/plugin/{plugin}/{command}", payload, token=token)
        assert status == 202, (status, body)
        return str(body["job_id"])

    def job(self, job_id: str, token: str) -> dict[str, Any]:
        status, body = self.request("GET", f"/job/{job_id}", token=token)
        assert status == 200, (status, body)
        return dict(body)

    def wait_job(self, job_id: str, token: str, statuses: tuple[str, ...] = ("succeeded", "failed", "timed_out", "dead"),
                 deadline: float = DEADLINE) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            j = self.job(job_id, token)
            return j if j["status"] in statuses else None

        return wait_for(f"job {job_id} to reach {statuses}", done, deadline, log=self.log, interval=0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = DEADLINE) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"serve did not exit within {timeout}s of signal {sig}:\n{self.log()[-4000:]}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def make_serve_world(tmp: Path, config_body: str, plugins: dict[str, str] | None = None,
                     secrets: dict[str, str] | None = None) -> ServeWorld:
    base = tmp / "world"
    base.mkdir()
    for d, mode in (("etc", 0o700), ("etc/secret", 0o700), ("state", 0o700), ("plugins", 0o755)):
        (base / d).mkdir(mode=mode)
        os.chmod(base / d, mode)
    world = ServeWorld(base, free_port(), config_body, dict(secrets or {}))
    for name, source in (plugins or {}).items():
        plugin(world.plugins, name, source)
    if secrets:
        make_vault(world.etc, secrets)
    world.write_config()
    return world


# one job at a time or it says so: mkdir is atomic, so a second concurrent run finds the dir
SOLO = f'''\
    #!{PY}
    import json, os, sys, time
    req = json.load(sys.stdin)
    lock = req["payload"]["lock"]
    try:
        os.mkdir(lock)
    except FileExistsError:
        json.dump({{"status": "ok", "result": {{"overlap": True}}}}, sys.stdout)
        sys.exit(0)
    time.sleep(0.2)
    os.rmdir(lock)
    json.dump({{"status": "ok", "result": {{"overlap": False}}}}, sys.stdout)
'''


# answers once the file named by payload["gate"] exists (at most a minute): a job that runs
# exactly as long as the test wants, with no sleep to guess
WAITER = f'''\
    #!{PY}
    import json, os, sys, time
    req = json.load(sys.stdin)
    gate = req["payload"].get("gate", "/nonexistent")
    for _ in range(1200):
        if os.path.exists(gate):
            break
        time.sleep(0.05)
    json.dump({{"status": "ok", "result": {{"gate": os.path.exists(gate)}}}}, sys.stdout)
'''
