"""doctor's privilege-posture section: the gate cell the gateway lands in, the reconcile plan
(exactly what the boot will do: the same planner), the side doors, accounts shared by
plugins with different vault principals, and plugins their account could not execute or
whose lock does not vouch for them. Runs the pure steps only; changes nothing.

"The gateway" is the one its systemd unit starts, when a unit runs this config
(``runtime.posture``): a shell without the unit's capabilities is reported as such, in an
INFO line, and never turned into a refusal the real gateway would not make.
"""

from __future__ import annotations

import os

from ductile.config import LoadedConfig
from ductile.findings import Finding, Severity
from ductile.hints import as_unit, this_command
from ductile.interpreter import world_executable
from ductile.lock import lock_states, relock_command
from ductile.plugins.discovery import Discovery
from ductile.privsep.accounts import resolve_account
from ductile.privsep.gate import GateVerdict
from ductile.privsep.probe import interpreter_of
from ductile.runtime.boot import Assessment, discover
from ductile.runtime.posture import PostureView, assess_posture
from ductile.privsep import landlock, landlock_linux
from ductile.runtime.confine import (ContainmentView, account_path, assess_containment, hard_limits, landlock_findings,
                                     plugin_facts)
from ductile.vault.compose import principal_for

SIDE_DOOR = "sidedoor"


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
            if r.scope is None:
                out.append(Finding("error", "privsep", r.path, f"filesystem reconcile {view.where} would refuse to start: {r.message}", r.fix))
            else:
                out.append(Finding("error", "privsep", r.path, f"account {r.scope} would be refused (its jobs fail, "
                                   f"other accounts run): {r.message}", r.fix))
        for act in a.plan.runnable():
            out.append(Finding("info", "privsep", act.path, f"at start the gateway will {act.describe()}", ""))
    for door in a.side_doors:
        who = "the gateway would refuse to start" if door.account is None else f"account {door.account} would be refused"
        if door.severity == "refuse":
            out.append(Finding("error", SIDE_DOOR, door.path, f"{who}: {door.message}", door.fix))
        else:
            out.append(Finding("warning", SIDE_DOOR, door.path, door.message, door.fix))
    if a.enforcing:
        discovery = discover(loaded)
        out += shared_account_findings(loaded, discovery)
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
                if state in ("drifted", "unlocked", "unknown", "outdated"):
                    why = {"drifted": "its bytes differ from its lock", "unlocked": "it has no entry in the lock file",
                           "unknown": "its lock state cannot be read (no access to the vault key?)",
                           "outdated": "the lock file has the old format 1, which never covered its helpers"}[state]
                    fix = (f"review the plugins, then `{relock_command(loaded)}` and commit with the code it prints"
                           if state == "outdated" else f"review the plugin, then `ductile plugin lock {name}`")
                    out.append(Finding("warning", "privsep", f"plugins.{name}",
                                       f"plugin {name} is {state}: {why}, so its jobs run as `untrusted` (or fail without that tier)",
                                       fix))
    return out


def _vault_principals(loaded: LoadedConfig) -> set[str] | None:
    """Principals the vault knows, or None when this process cannot read the vault."""
    from ductile.errors import DuctileError
    from ductile.vault.store import VaultStore

    try:
        doc = VaultStore.from_config(loaded.config.secrets).read_if_present()
    except (DuctileError, OSError):
        return None
    return set(doc.principals) if doc is not None else set()


def shared_account_findings(loaded: LoadedConfig, discovery: Discovery) -> list[Finding]:
    """The account is the isolation unit: code of one plugin can read another's secrets
    when both run as the same uid (``/proc/<pid>/mem``, a planted ``.pth``), so plugins
    with different vault principals on one account warn. A principal counts when the
    vault knows it or the config names it (``vault_principal``, ``requires_vault``): a
    plugin whose implicit principal holds nothing has no secrets to lose."""
    cfg = loaded.config
    known = _vault_principals(loaded)
    by_account: dict[str, dict[str, list[str]]] = {}
    for name, pc in sorted(cfg.plugins.items()):
        if not pc.enabled or name not in discovery.plugins:
            continue
        principal = principal_for(name, pc)
        if not (pc.vault_principal or pc.requires_vault or (known is not None and principal in known)):
            continue
        resolved = resolve_account(cfg, name, True)
        if resolved.confined and resolved.name:
            by_account.setdefault(resolved.name, {}).setdefault(principal, []).append(name)
    out = []
    for account, principals in sorted(by_account.items()):
        if len(principals) < 2:
            continue
        first, *others = sorted(principals.items())
        shown = "; ".join(f"{', '.join(plugins)} (principal {p})" for p, plugins in sorted(principals.items()))
        out.append(Finding("warning", "privsep", f"accounts.{account}",
                           f"plugins with different vault principals share account {account}: {shown}. The account is "
                           "the isolation unit: each one's code can read the others' secrets (same uid)",
                           f"give {first[1][0]} its own account (accounts.{first[1][0]}: {{uid, gid, state_dir}}, "
                           f"plugins.{first[1][0]}.run_as: {first[1][0]})"))
    return out


def containment_findings(loaded: LoadedConfig, view: ContainmentView | None = None,
                         hard: dict[str, int | None] | None = None) -> list[Finding]:
    """The containment mode this host gives (SPEC §5.9) and what enforces each configured limit.
    (Accounts shared by plugins with different vault principals: ``shared_account_findings``.)"""
    cfg = loaded.config
    view = view or assess_containment(cfg)
    hard = hard_limits() if hard is None else hard
    d = view.decision
    out: list[Finding] = []
    if d.refused:
        out.append(Finding("error", "containment", "service.containment",
                           f"service.containment is cgroup but {d.reason}: the gateway would refuse to start", d.fix))
    elif d.mode == "sweep":
        out.append(Finding("warning", "containment", "service.containment",
                           f"containment: sweep — {d.reason}; a job's leftovers are killed only when no other job of its "
                           "account runs, and limits fall back to rlimits",
                           "give the gateway a cgroup v2 subtree: Delegate=yes in its unit (`ductile deploy render unit`), "
                           "or service.cgroup_root"))
    else:
        out.append(Finding("info", "containment", "service.containment", f"containment: cgroup — {d.reason}", ""))
    for name, pc in sorted(cfg.plugins.items()):
        if pc.limits is None:
            continue
        for limit, how in view.limits_for(pc, hard).enforced.items():
            severity: Severity = "warning" if how.startswith("NOT ENFORCED") else "info"
            out.append(Finding(severity, "containment", f"plugins.{name}.limits.{limit}", f"{limit}: {how}",
                               "delegate the controller to the gateway (systemd Delegate=yes)" if severity == "warning" else ""))
    return out


def landlock_section(loaded: LoadedConfig, abi: int | None = None) -> list[Finding]:
    """Landlock on this kernel (SPEC §5.10): absent is a warning (an error under
    service.require_landlock); filesystem rules that reach the secret surface or do not
    exist are errors; absolute paths in a plugin's config outside its allowlist are
    warnings that name the rule to add."""
    cfg = loaded.config
    abi = landlock_linux.abi() if abi is None else abi
    out: list[Finding] = []
    if abi <= 0:
        sev: Severity = "error" if cfg.service.require_landlock else "warning"
        out.append(Finding(sev, "landlock", "service.require_landlock" if cfg.service.require_landlock else "landlock",
                           "this kernel has no Landlock: confined plugins can read every world-readable file and reach "
                           "any port" + (" — the gateway would refuse to start" if sev == "error" else ""),
                           "boot a kernel with Landlock enabled (CONFIG_SECURITY_LANDLOCK, lsm=...,landlock)"))
    else:
        out.append(Finding("info", "landlock", "landlock", f"Landlock ABI {abi}: {landlock.enforced_kinds(abi)}", ""))
    out += landlock_findings(loaded)
    if not cfg.accounts:
        return out
    discovery = discover(loaded)
    for name, plugin in sorted(discovery.plugins.items()):
        pc = cfg.plugins.get(name)
        resolved = resolve_account(cfg, name, True)
        if pc is None or not pc.enabled or not resolved.confined or resolved.state_dir is None:
            continue
        for key, how in landlock.enforcement(abi, pc.filesystem, pc.network, True).items():
            if how.startswith("NOT ENFORCED") and abi > 0:
                out.append(Finding("warning", "landlock", f"plugins.{name}", f"{key}: {how}", ""))
        path = account_path(cfg.service.plugin_path, resolved.uid, resolved.gid)
        ruleset = landlock.build_ruleset(max(abi, 1), plugin_facts(plugin.directory, plugin.entrypoint, path),
                                         resolved.state_dir, [d for d in path.split(":") if d], pc.filesystem,
                                         pc.network, os.path.exists)
        if ruleset is not None:
            out += landlock.hint_findings(name, pc.config, ruleset)
    return out
