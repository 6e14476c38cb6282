"""doctor's privilege-posture section: the gate cell the gateway lands in, the reconcile plan,
and plugins their account could not execute. Runs the pure steps only; changes nothing.

"The gateway" is the one its systemd unit starts, when a unit runs this config
(``runtime.posture``): a shell without the unit's capabilities is reported as such, in an
INFO line, and never turned into a refusal the real gateway would not make.
"""

from __future__ import annotations

import os

from ductile.config import LoadedConfig
from ductile.findings import Finding
from ductile.hints import as_unit, this_command
from ductile.interpreter import world_executable
from ductile.lock import lock_states
from ductile.privsep.accounts import resolve_account
from ductile.privsep.gate import GateVerdict
from ductile.privsep.probe import interpreter_of
from ductile.runtime.boot import Assessment, discover
from ductile.runtime.posture import PostureView, assess_posture


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


def unit_fix(view: PostureView, loaded: LoadedConfig, v: GateVerdict) -> str:
    """How to mend a unit whose gateway the boot gate would refuse."""
    assert view.unit is not None
    if v.cell.startswith("no-capability"):
        return (f"give {view.unit.facts.name} AmbientCapabilities=CAP_SETUID CAP_SETGID and the same CapabilityBoundingSet=: "
                f"ductile deploy render unit --config {loaded.directory} > {view.unit.facts.path}, then systemctl daemon-reload")
    return v.fix


def gate_findings(loaded: LoadedConfig, view: PostureView) -> list[Finding]:
    """The gate verdict for the gateway that will run, and this shell beside it if it differs."""
    out: list[Finding] = []
    if view.others:
        assert view.unit is not None
        names = ", ".join(u.name for u in (view.unit.facts, *view.others))
        out.append(Finding("warning", "privsep", "service", f"{len(view.others) + 1} units start this config ({names}): "
                           "two gateways would share one state database and one vault", "disable all but one"))
    if view.unit is not None and view.unit.assessment is None:
        out.append(Finding("error", "privsep", "service", f"{view.unit.facts.name} ({view.unit.facts.path}) cannot start "
                           f"the gateway: {view.unit.problem}", "run deploy/install.sh (systemd-sysusers creates the user)"))
    a = view.effective
    v = a.verdict
    who = "root" if a.gateway_uid == 0 else f"uid {a.gateway_uid}"
    if v.refused:
        fix = unit_fix(view, loaded, v) if view.under_unit else v.fix
        if not view.under_unit and not view.as_unit and v.cell == "no-capability+accounts":
            fix += (f"; no installed unit starts this config (searched {', '.join(view.searched)}), so this shell is all "
                    f"there is to judge: once the unit is installed, `{as_unit(this_command())}` runs this check as it would")
        out.append(Finding("error", "privsep", "accounts" if "accounts are configured" in v.message else "service",
                           f"boot gate {view.where} [{v.cell}] would refuse to start: {v.message}", fix))
    else:
        out.append(Finding("info", "privsep", "posture",
                           f"boot gate {view.where} [{v.cell}] -> {v.posture} (as {who}): {v.message}",
                           v.fix if v.posture == "unconfined" else ""))
    if view.shell_differs():
        assert view.unit is not None
        s = view.shell.verdict
        shell_who = "root" if view.shell.gateway_uid == 0 else f"uid {view.shell.gateway_uid}"
        out.append(Finding("info", "privsep", "shell",
                           f"{view.shell_label()}: run here, the boot gate would say {s.posture} [{s.cell}] as {shell_who}; "
                           f"that is this shell, not the gateway, which runs under {view.unit.facts.describe()} and "
                           f"will {'refuse' if v.refused else v.posture}",
                           f"to run a command as the unit would, from a root shell: {as_unit(this_command())}"))
    return out


def posture_findings(loaded: LoadedConfig, assessment: Assessment | None = None,
                     view: PostureView | None = None) -> list[Finding]:
    cfg = loaded.config
    view = view or assess_posture(loaded, shell=assessment)
    a = view.effective
    v = a.verdict
    out = gate_findings(loaded, view)
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
            out.append(Finding("error", "privsep", r.path, f"filesystem reconcile {view.where} would refuse to start: {r.message}", r.fix))
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
