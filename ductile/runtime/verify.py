"""``account verify``: the wall test as an operator command (SPEC §5.8).

For each account, a probe (``ductile/privsep/probe.py``) is spawned through the same
``build_spawn_spec`` + ``spawn`` as every plugin, under the same containment, and reports
what the kernel let it do. The request (what to try) is built here from the config; the
judging is the probe's own verdicts, plus one the gateway makes after the probe's job
ended: the daemon the probe left behind (fork, setsid, fork) must be gone. A probe that
could not run yields NOT RUN checks — never a pass.

Beside the probe, the side-door audit (``privsep.sidedoor``: what the host grants the
uid outside the drop — a privileged gid, a login, sudo rules, a writable PATH entry)
adds one row per finding: REFUSED is a breach; WARN is shown as such and becomes a
breach under ``--strict``; a clean account gets one NONE FOUND row.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from ductile.config import LoadedConfig
from ductile.config.model import FilesystemConfig, NetworkConfig
from ductile.deploy.installed import units_running
from ductile.errors import DuctileError
from ductile.hints import as_unit, this_command
from ductile.interpreter import account_reachable_python
from ductile.plugins.discovery import Discovery
from ductile.privsep import kernel
from ductile.privsep.accounts import ResolvedAccount, account, resolve_account
from ductile.privsep.spawnspec import build_spawn_spec
from ductile.privsep.sidedoor import SideDoor
from ductile.runtime.boot import Assessment, assess, discover, side_door_audit
from ductile.privsep.landlock import PluginFacts
from ductile.runtime.confine import Containment, assess_containment, plugin_facts, setup_containment
from ductile.runtime.jobcontain import KILL_HELPER
from ductile.runtime.launch import forget, launch, run_helper
from ductile.runtime.outcome import classify
from ductile.runtime.spawn import spawn

PROBE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "privsep", "probe.py")
PROBE_TIMEOUT = 30.0
ESCAPEE_GRACE = 5.0  # seconds for a killed escapee to die (a zombie counts as dead)


@dataclass(frozen=True)
class AccountReport:
    name: str
    uid: int
    gid: int
    checks: tuple[dict[str, Any], ...]
    not_run: str = ""
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def breaches(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if c["ok"] is False]

    @property
    def unverified(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if c["ok"] is None]

    @property
    def warnings(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if c.get("warn") and c["ok"] is True]


@dataclass(frozen=True)
class VerifyReport:
    assessment: Assessment
    accounts: tuple[AccountReport, ...]
    containment: dict[str, Any] = field(default_factory=dict)

    def exit_code(self) -> int:
        """1 on any breach; 2 when something could not be checked (or nothing was); 0 only
        when every check of at least one account held."""
        if any(a.breaches for a in self.accounts):
            return 1
        if not self.accounts or any(a.not_run or a.unverified for a in self.accounts):
            return 2
        return 0

    def as_dict(self) -> dict[str, Any]:
        v = self.assessment.verdict
        return {"posture": v.posture, "cell": v.cell, "gateway_uid": self.assessment.gateway_uid,
                "accounts": [{"name": a.name, "uid": a.uid, "gid": a.gid, "not_run": a.not_run, "checks": list(a.checks),
                              "facts": a.facts} for a in self.accounts],
                "breaches": sum(len(a.breaches) for a in self.accounts), "containment": self.containment,
                "side_door_warnings": sum(len(a.warnings) for a in self.accounts)}


def probe_request(loaded: LoadedConfig, name: str, entrypoints: list[tuple[str, str]], gateway_uid: int,
                  gateway_sid: int | None = None) -> dict[str, Any]:
    """What the probe running as account ``name`` must be denied, may write, must execute."""
    cfg = loaded.config
    deny = [{"label": "age key", "path": cfg.secrets.age_key_file},
            {"label": "config dir", "path": loaded.directory},
            *({"label": "config file", "path": f} for f in loaded.files),
            {"label": "state DB", "path": cfg.state.path},
            {"label": "vault file", "path": cfg.secrets.vault_file}]
    deny += [{"label": f"sibling {other}", "path": acct.state_dir}
             for other, acct in sorted(cfg.accounts.items()) if other != name and acct.state_dir != cfg.accounts[name].state_dir]
    acct = cfg.accounts[name]
    return {"deny": deny, "writable": acct.state_dir,
            "exec": [{"label": f"plugin {p}", "path": path} for p, path in entrypoints],
            "gateway_uid": gateway_uid, "gateway_sid": gateway_sid, "expect": {"uid": acct.uid, "gid": acct.gid}}


def side_door_checks(account: str, doors: list[SideDoor], strict: bool) -> list[dict[str, Any]]:
    """Rows for one account: its own side doors and the gateway-wide ones (a PATH entry)."""
    mine = [d for d in doors if d.account in (account, None)]
    if not mine:
        return [{"label": "side doors", "path": "passwd, group, sudoers, plugin PATH", "expect": "NONE",
                 "verdict": "NONE FOUND", "ok": True, "detail": ""}]
    rows = []
    for d in mine:
        refused = d.severity == "refuse" or strict
        rows.append({"label": f"side door: {d.rule}", "path": d.path, "expect": "NONE",
                     "verdict": "REFUSED" if refused else "WARN", "ok": not refused, "warn": d.severity == "warn",
                     "detail": f"{d.message} (fix: {d.fix})"})
    return rows


def _not_run(resolved: ResolvedAccount, why: str, checks: list[dict[str, Any]]) -> AccountReport:
    assert resolved.name and resolved.uid and resolved.gid
    return AccountReport(resolved.name, resolved.uid, resolved.gid, tuple(checks), not_run=why)


def escapee_check(pid: Any, mode: str, swept: bool) -> dict[str, Any]:
    """The probe's daemon must not outlive the probe's job. In sweep mode with another job
    of the account running somewhere, the sweep waits for that job: not checked, not a pass."""
    label, expect = "leftover processes", "KILLED"
    if not isinstance(pid, int):
        return {"label": label, "path": "fork+setsid daemon", "expect": expect, "verdict": "NOT STARTED", "ok": None,
                "detail": "the probe could not start its daemon"}
    deadline = time.monotonic() + ESCAPEE_GRACE
    while True:
        try:
            gone = psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            gone = True
        if gone or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if not gone and mode == "sweep" and not swept:
        return {"label": label, "path": f"fork+setsid daemon pid {pid}", "expect": expect, "verdict": "DEFERRED",
                "ok": None, "detail": "another job of this account runs; it is swept when that job ends"}
    return {"label": label, "path": f"fork+setsid daemon pid {pid}", "expect": expect,
            "verdict": "KILLED" if gone else "SURVIVED", "ok": gone,
            "detail": f"containment {mode}" + ("" if gone else ": a daemon outlived its job")}


LANDLOCK_READ_TARGET = "/etc/passwd"  # world-readable everywhere, outside every allowlist


class LandlockTargets:
    """What the probe tries against its Landlock ruleset: a world-readable file outside it,
    a TCP listener on a port it may not connect to, and a process of the same account in
    another domain (a sitter the gateway starts outside the job) it may not signal."""

    def __init__(self, resolved: ResolvedAccount, abi: int) -> None:
        self.resolved, self.abi = resolved, abi
        self.listener: socket.socket | None = None
        self.sitter: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LandlockTargets:
        if self.abi <= 0:
            return self
        self.listener = socket.create_server(("127.0.0.1", 0))
        try:
            self.sitter = launch(["/bin/sleep", "60"], uid=self.resolved.uid, gid=self.resolved.gid,
                                 env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, cwd="/")
        except OSError:
            self.sitter = None
        return self

    def request(self) -> dict[str, Any]:
        port = self.listener.getsockname()[1] if self.listener is not None else None
        return {"abi": self.abi, "read": LANDLOCK_READ_TARGET, "connect_port": port,
                "signal_pid": self.sitter.pid if self.sitter is not None else None}

    def __exit__(self, *exc: object) -> None:
        if self.listener is not None:
            self.listener.close()
        if self.sitter is not None:
            if self.sitter.poll() is None:
                try:
                    self.sitter.kill()
                except PermissionError:  # cap-only: the kill helper, as the account
                    run_helper([KILL_HELPER, "-KILL", str(self.sitter.pid)], uid=self.resolved.uid,
                               gid=self.resolved.gid)
            try:
                self.sitter.wait(5)
            except subprocess.TimeoutExpired:
                pass
            forget(self.sitter)


def probe_facts(python: str) -> PluginFacts:
    """The probe's own directory and interpreter, for its Landlock ruleset."""
    real = os.path.realpath(python)
    venv = os.path.dirname(os.path.dirname(python))
    return PluginFacts(os.path.dirname(PROBE), os.path.dirname(os.path.dirname(real)),
                       venv if os.path.isfile(os.path.join(venv, "pyvenv.cfg")) else None)


def probe_filesystem(request: dict[str, Any], discovery: Discovery, entrypoints: list[tuple[str, str]]) -> FilesystemConfig:
    """The probe's own rules beyond the default allowlist: /proc, every path it must find DENIED
    (so that verdict proves the uid wall, not Landlock), the plugins it checks, /dev/tty
    (so "no controlling terminal" is ENXIO from the session, not EACCES from Landlock).
    Built here, never from operator config: the probe is ductile's own code."""
    read = ["/proc"]  # its own status, fds and cgroup
    read += [t["path"] for t in request["deny"] if os.path.exists(t["path"])]
    for name, _entry in entrypoints:
        plugin = discovery.plugins[name]
        facts = plugin_facts(plugin.directory, plugin.entrypoint, "/usr/local/bin:/usr/bin:/bin")
        read += [p for p in (facts.directory, facts.interpreter_prefix, facts.venv_root) if p and os.path.exists(p)]
    return FilesystemConfig(read=tuple(dict.fromkeys(read)), write=("/dev/tty",) if os.path.exists("/dev/tty") else ())


def verify_accounts(loaded: LoadedConfig, names: list[str] | None = None, *, strict: bool = False) -> VerifyReport:
    cfg = loaded.config
    unknown = [n for n in (names or []) if n not in cfg.accounts]
    if unknown:
        raise DuctileError(f"no account named {', '.join(unknown)}", where="accounts",
                           fix=f"choose from: {', '.join(sorted(cfg.accounts)) or 'none configured'}")
    discovery = discover(loaded)
    assessment = assess(loaded)
    doors = list(assessment.side_doors) if assessment.enforcing else side_door_audit(cfg, assessment.gateway_uid)
    targets = [account(cfg, n, "granted") for n in sorted(names or cfg.accounts)]
    python = account_reachable_python()
    why = ""
    if not assessment.capability:
        why = "this process lacks CAP_SETUID+CAP_SETGID, so it cannot spawn the probes as the accounts; "
        if units_running(loaded.directory, loaded.path):
            why += f"from a root shell, `{as_unit(this_command())}` runs it with the unit's user and capabilities"
        else:
            why += "run it from a root shell (no installed unit starts this config, so --as-unit has none to copy)"
    elif python is None:
        why = "no Python interpreter is reachable by accounts (see deploy/find-python.sh)"
    containment: Containment | None = None
    if not why:
        kernel.harden_gateway()
        containment = setup_containment(cfg, enforcing=True)
    try:
        reports = _probe_all(loaded, targets, discovery, assessment, python, why, containment, doors, strict)
    finally:
        if containment is not None:
            containment.close()
    view = containment.view if containment is not None else assess_containment(cfg)
    info = {"mode": view.decision.mode, "reason": view.decision.reason,
            "cgroup": containment.instance_path if containment is not None else "",
            "landlock_abi": containment.landlock_abi if containment is not None else 0}
    return VerifyReport(assessment, tuple(reports), info)


def _probe_all(loaded: LoadedConfig, targets: list[ResolvedAccount], discovery: Discovery, assessment: Assessment,
               python: str | None, why: str, containment: Containment | None, doors: list[SideDoor],
               strict: bool) -> list[AccountReport]:
    cfg = loaded.config
    reports = []
    for resolved in targets:
        doors_of = side_door_checks(resolved.name or "", doors, strict)
        if why:
            reports.append(_not_run(resolved, why, doors_of))
            continue
        entrypoints = sorted(
            (p, plugin.entrypoint) for p, plugin in discovery.plugins.items()
            if p in cfg.plugins and cfg.plugins[p].enabled and resolve_account(cfg, p, True).name == resolved.name)
        request = probe_request(loaded, resolved.name or "", entrypoints, assessment.gateway_uid, os.getsid(0))
        abi = containment.landlock_abi if containment is not None else 0
        with LandlockTargets(resolved, abi) as targets_:
            request["landlock"] = targets_.request()
            conf = None
            if containment is not None:
                conf = containment.confinement_for(cfg, "", resolved, probe_facts(python or ""),
                                                   filesystem=probe_filesystem(request, discovery, entrypoints),
                                                   network=NetworkConfig())
            try:
                spec = build_spawn_spec(resolved, PROBE, cfg.service, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                                        timeout=PROBE_TIMEOUT, unconfined_workdir="/",
                                        gateway_uid=assessment.gateway_uid,
                                        program=(python or "", "-I", "-S", PROBE), confinement=conf)
                raw = spawn(spec, json.dumps(request).encode())
            except DuctileError as err:
                reports.append(_not_run(resolved, err.one_line(), doors_of))
                continue
        outcome = classify(spec, raw, "verify-probe")
        if outcome.status != "succeeded" or outcome.response is None or not isinstance(outcome.response.result, dict):
            reports.append(_not_run(resolved, f"probe did not run: {outcome.reason or 'no answer'}", doors_of))
            continue
        result = outcome.response.result
        assert resolved.name and resolved.uid and resolved.gid
        facts = result.get("facts", {})
        checks = [*result.get("checks", []), escapee_check(facts.get("escapee"), spec.confinement.mode, raw.swept),
                  *doors_of]
        reports.append(AccountReport(resolved.name, resolved.uid, resolved.gid, tuple(checks), facts=facts))
    return reports
