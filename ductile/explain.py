"""``account explain`` and ``account list``: the pure privsep decisions, shown instead of
applied. Nothing here touches the OS; callers pass in the posture view and discovery.

The story told is the gateway's under its unit when one runs this config (see
``runtime.posture``); when the boot gate would refuse, the story ends there: no account,
no working directory, nothing reachable, because no plugin would run at all.
"""

from __future__ import annotations

from typing import Any

from ductile.config import LoadedConfig
from ductile.lock import lock_states
from ductile.plugins.discovery import Discovery
from ductile.privsep.accounts import UNTRUSTED_TIER, resolve_account
from ductile.privsep.env import build_env
from ductile.privsep.landlock import WRITE_FILE, Ruleset, enforcement, hint_findings
from ductile.runtime.confine import ContainmentView
from ductile.runtime.posture import PostureView


def _why(loaded: LoadedConfig, plugin: str, enforcing: bool, source: str) -> str:
    pc = loaded.config.plugins.get(plugin)
    if not enforcing:
        return "the boot gate chose the unconfined posture, so no plugin is dropped"
    if source == "granted":
        return f"plugins.{plugin}.run_as grants account '{pc.run_as if pc else '?'}'"
    if source == "default":
        return "no run_as grant, so the `default` tier applies"
    return "no run_as grant and no `default` tier, so it runs unconfined at the gateway uid"


def downgrade_outcome(loaded: LoadedConfig, confined: bool) -> str:
    if not confined:
        return "not confined: fingerprint binding does not apply"
    untrusted = loaded.config.accounts.get(UNTRUSTED_TIER)
    if untrusted is None:
        return "no `untrusted` tier: a job whose bytes drift from the lock fails terminally (NoDowngradeTarget)"
    return f"downgraded to account `untrusted` (uid {untrusted.uid}), event plugin.account_downgraded"


def containment_info(loaded: LoadedConfig, plugin: str, view: ContainmentView,
                     hard: dict[str, int | None]) -> dict[str, Any]:
    d = view.decision
    limits = view.limits_for(loaded.config.plugins.get(plugin), hard)
    return {"mode": d.mode, "reason": d.reason, "refused": d.refused, "controllers": list(view.controllers),
            "limits": dict(limits.enforced), "rlimits": {name: value for name, value in limits.rlimits}}


def landlock_info(loaded: LoadedConfig, plugin: str, abi: int, ruleset: Ruleset | None, confined: bool) -> dict[str, Any]:
    pc = loaded.config.plugins.get(plugin)
    fs, net = (pc.filesystem, pc.network) if pc is not None else (None, None)
    info: dict[str, Any] = {"abi": abi, "enforced": enforcement(abi, fs, net, confined)}
    if ruleset is not None:
        info["read"] = sorted(r.path for r in ruleset.paths if not r.access & WRITE_FILE)
        info["write"] = sorted(r.path for r in ruleset.paths if r.access & WRITE_FILE)
        info["hints"] = [f.message for f in hint_findings(plugin, pc.config if pc else {}, ruleset)]
    return info


def _gate(view: PostureView) -> dict[str, Any]:
    a = view.effective
    v = a.verdict
    return {"posture": v.posture, "cell": v.cell, "message": v.message, "fix": v.fix, "capability": a.capability,
            "gateway_uid": a.gateway_uid, "judged": view.where,
            "unit": view.unit.facts.name if view.under_unit and view.unit else None}


def _shell(view: PostureView) -> dict[str, Any] | None:
    if not view.shell_differs():
        return None
    s = view.shell
    return {"posture": s.verdict.posture, "cell": s.verdict.cell, "capability": s.capability,
            "gateway_uid": s.gateway_uid, "label": view.shell_label()}


def explain_plugin(loaded: LoadedConfig, view: PostureView, discovery: Discovery, plugin: str,
                   gateway_env: dict[str, str], containment: dict[str, Any] | None = None,
                   landlock: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = loaded.config
    assessment = view.effective
    pc = cfg.plugins.get(plugin)
    found = discovery.plugins.get(plugin)
    head = {
        "plugin": plugin,
        "configured": pc is not None,
        "enabled": bool(pc and pc.enabled),
        "discovered": found is not None,
        "entrypoint": found.entrypoint if found else None,
        "gate": _gate(view),
        "shell": _shell(view),
    }
    if assessment.verdict.refused:
        return {**head, "runs": False, "account": None, "cwd": None, "env_keys": [], "groups": None,
                "lock_state": lock_states(loaded, discovery).get(plugin, "-") if found else "-",
                "on_fingerprint_mismatch": "", "cannot_reach": [], "can_write": [], "containment": containment,
                "landlock": landlock}
    enforcing = assessment.enforcing
    resolved = resolve_account(cfg, plugin, enforcing)
    lock = lock_states(loaded, discovery).get(plugin, "-") if found else "-"
    home = resolved.state_dir if resolved.confined else None
    env = build_env(gateway_env, cfg.service.plugin_env_passthrough, home)
    others = sorted(n for n, a in cfg.accounts.items() if n != resolved.name)
    return {
        **head,
        "runs": True,
        "account": {"name": resolved.name, "uid": resolved.uid, "gid": resolved.gid, "source": resolved.source,
                    "why": _why(loaded, plugin, enforcing, resolved.source)},
        "cwd": resolved.state_dir if resolved.confined else f"{cfg.state.path.rsplit('/', 1)[0]}/unconfined/{plugin}",
        "env_keys": sorted(env),
        "groups": [] if resolved.confined else None,
        "lock_state": lock,
        "on_fingerprint_mismatch": downgrade_outcome(loaded, resolved.confined),
        "cannot_reach": ([f"age key {cfg.secrets.age_key_file}", f"config dir {loaded.directory}",
                          f"state DB {cfg.state.path}", f"vault {cfg.secrets.vault_file}"]
                         + [f"account {o}'s {cfg.accounts[o].state_dir}" for o in others]) if resolved.confined else [],
        "can_write": [resolved.state_dir] if resolved.confined else ["whatever the gateway uid can write"],
        "containment": containment,
        "landlock": landlock,
    }


def account_table(loaded: LoadedConfig, discovery: Discovery, enforcing: bool) -> list[dict[str, Any]]:
    cfg = loaded.config
    rows = []
    for name, acct in sorted(cfg.accounts.items()):
        plugins = sorted(p for p in cfg.plugins if resolve_account(cfg, p, True).name == name)
        tier = name if name in ("default", "untrusted") else ""
        rows.append({"name": name, "uid": acct.uid, "gid": acct.gid, "state_dir": acct.state_dir, "tier": tier,
                     "plugins": plugins})
    unconfined = sorted(p for p in cfg.plugins if not resolve_account(cfg, p, True).confined)
    if unconfined or not enforcing:
        rows.append({"name": "(unconfined)", "uid": None, "gid": None, "state_dir": None, "tier": "",
                     "plugins": sorted(cfg.plugins) if not enforcing else unconfined})
    return rows
