"""``account verify``: the wall test as an operator command (SPEC §5.8).

For each account, a probe (``ductile/privsep/probe.py``) is spawned through the same
``build_spawn_spec`` + ``spawn`` as every plugin and reports what the kernel let it do.
The request (what to try) is built here from the config; the judging is the probe's own
verdicts. A probe that could not run yields NOT RUN checks — never a pass.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ductile.config import LoadedConfig
from ductile.deploy.installed import units_running
from ductile.errors import DuctileError
from ductile.hints import as_unit, this_command
from ductile.interpreter import account_reachable_python
from ductile.privsep import kernel
from ductile.privsep.accounts import ResolvedAccount, account, resolve_account
from ductile.privsep.spawnspec import build_spawn_spec
from ductile.runtime.boot import Assessment, assess, discover
from ductile.runtime.outcome import classify
from ductile.runtime.spawn import spawn

PROBE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "privsep", "probe.py")
PROBE_TIMEOUT = 30.0


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


@dataclass(frozen=True)
class VerifyReport:
    assessment: Assessment
    accounts: tuple[AccountReport, ...]

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
                "breaches": sum(len(a.breaches) for a in self.accounts)}


def probe_request(loaded: LoadedConfig, name: str, entrypoints: list[tuple[str, str]], gateway_uid: int) -> dict[str, Any]:
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
            "gateway_uid": gateway_uid, "expect": {"uid": acct.uid, "gid": acct.gid}}


def _not_run(resolved: ResolvedAccount, why: str) -> AccountReport:
    assert resolved.name and resolved.uid and resolved.gid
    return AccountReport(resolved.name, resolved.uid, resolved.gid, (), not_run=why)


def verify_accounts(loaded: LoadedConfig, names: list[str] | None = None) -> VerifyReport:
    cfg = loaded.config
    unknown = [n for n in (names or []) if n not in cfg.accounts]
    if unknown:
        raise DuctileError(f"no account named {', '.join(unknown)}", where="accounts",
                           fix=f"choose from: {', '.join(sorted(cfg.accounts)) or 'none configured'}")
    discovery = discover(loaded)
    assessment = assess(loaded)
    targets = [account(cfg, n, "granted") for n in sorted(names or cfg.accounts)]
    reports = []
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
    if not why:
        kernel.harden_gateway()
    for resolved in targets:
        if why:
            reports.append(_not_run(resolved, why))
            continue
        entrypoints = sorted(
            (p, plugin.entrypoint) for p, plugin in discovery.plugins.items()
            if p in cfg.plugins and cfg.plugins[p].enabled and resolve_account(cfg, p, True).name == resolved.name)
        request = probe_request(loaded, resolved.name or "", entrypoints, assessment.gateway_uid)
        try:
            spec = build_spawn_spec(resolved, PROBE, cfg.service, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                                    timeout=PROBE_TIMEOUT, unconfined_workdir="/", gateway_uid=assessment.gateway_uid,
                                    program=(python or "", "-I", "-S", PROBE))
            raw = spawn(spec, json.dumps(request).encode())
        except DuctileError as err:
            reports.append(_not_run(resolved, err.one_line()))
            continue
        outcome = classify(spec, raw, "verify-probe")
        if outcome.status != "succeeded" or outcome.response is None or not isinstance(outcome.response.result, dict):
            reports.append(_not_run(resolved, f"probe did not run: {outcome.reason or 'no answer'}"))
            continue
        result = outcome.response.result
        assert resolved.name and resolved.uid and resolved.gid
        reports.append(AccountReport(resolved.name, resolved.uid, resolved.gid, tuple(result.get("checks", [])),
                                     facts=result.get("facts", {})))
    return VerifyReport(assessment, tuple(reports))
