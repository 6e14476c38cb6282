"""doctor's privilege-posture section: the gate cell this host lands in, the reconcile plan,
and plugins their account could not execute. Runs the pure steps only; changes nothing."""

from __future__ import annotations

import os

from ductile.config import LoadedConfig
from ductile.findings import Finding
from ductile.interpreter import world_executable
from ductile.lock import lock_states
from ductile.privsep.accounts import resolve_account
from ductile.privsep.probe import interpreter_of
from ductile.runtime.boot import Assessment, assess, discover


def _interpreter_warning(plugin: str, entrypoint: str, account: str) -> Finding | None:
    if not world_executable(entrypoint):
        return Finding("warning", "privsep", f"plugins.{plugin}",
                       f"entrypoint {entrypoint} is not executable by account {account} (needs o+x on it and o+x on every directory above it)",
                       f"chmod o+rx {entrypoint} and o+x its parent directories")
    interp = interpreter_of(entrypoint)
    if interp and not world_executable(interp):
        return Finding("warning", "privsep", f"plugins.{plugin}",
                       f"interpreter {interp} (from the #! line of {entrypoint}) is not executable by account {account}",
                       "use an interpreter every account can reach, e.g. #!/usr/bin/python3 (not one under /root)")
    return None


def posture_findings(loaded: LoadedConfig, assessment: Assessment | None = None) -> list[Finding]:
    cfg = loaded.config
    a = assessment or assess(loaded)
    v = a.verdict
    out: list[Finding] = []
    if v.refused:
        out.append(Finding("error", "privsep", "accounts" if "accounts are configured" in v.message else "service",
                           f"boot gate [{v.cell}] would refuse to start: {v.message}", v.fix))
    else:
        out.append(Finding("info", "privsep", "posture", f"boot gate [{v.cell}] -> {v.posture} (as uid {a.gateway_uid}): {v.message}",
                           v.fix if v.posture == "unconfined" else ""))
    if v.posture == "unconfined":
        refs = [f"api.tokens ({len(cfg.api.tokens)})"] if cfg.api.tokens else []
        refs += ["webhooks"] if cfg.webhooks else []
        refs += [f"plugins.{p}.requires_vault" for p, pc in sorted(cfg.plugins.items()) if pc.requires_vault]
        if os.path.exists(cfg.secrets.vault_file) or refs:
            out.append(Finding("warning", "privsep", "secrets",
                               "secrets are configured (" + (", ".join(refs) or "a vault exists") + ") but plugins run "
                               "unconfined: any plugin can read the age key and the vault",
                               "run the gateway with accounts and CAP_SETUID+CAP_SETGID (the enforce posture)"))
    if a.plan is not None:
        for r in a.plan.refusals:
            out.append(Finding("error", "privsep", r.path, f"filesystem reconcile would refuse to start: {r.message}", r.fix))
        for act in a.plan.actions:
            out.append(Finding("info", "privsep", act.path, f"at start the gateway will {act.describe()}", ""))
    if a.enforcing:
        discovery = discover(loaded)
        locks = lock_states(loaded, discovery)
        for name, plugin in sorted(discovery.plugins.items()):
            pc = cfg.plugins.get(name)
            if pc is None or not pc.enabled:
                continue
            resolved = resolve_account(cfg, name, True)
            if resolved.confined:
                w = _interpreter_warning(name, plugin.entrypoint, resolved.name or "?")
                if w:
                    out.append(w)
                state = locks.get(name, "-")
                if state in ("drifted", "unlocked", "unknown"):
                    why = {"drifted": "its bytes differ from its lock", "unlocked": "it has no entry in the lock file",
                           "unknown": "its lock state cannot be read (no access to the vault key?)"}[state]
                    out.append(Finding("warning", "privsep", f"plugins.{name}",
                                       f"plugin {name} is {state}: {why}, so its jobs run as `untrusted` (or fail without that tier)",
                                       f"review the plugin, then `ductile plugin lock {name}`"))
    return out
