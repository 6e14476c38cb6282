"""List accounts, prove the wall holds for each, explain why a plugin runs as whom."""

from __future__ import annotations

import click

from ductile.cliopts import as_unit_option, config_option, json_option, run_as_unit_if_asked


@click.group()
def account() -> None:
    """List accounts, prove the wall holds for each, explain why a plugin runs as whom."""


@account.command("list")
@config_option
@json_option
@as_unit_option
def list_(config_path: str | None, as_json: bool, as_unit: bool) -> None:
    """Accounts, their tiers, and which plugins resolve to each."""
    run_as_unit_if_asked(as_unit, config_path)
    from ductile.config import load_config
    from ductile.explain import account_table
    from ductile.render import emit_json, table
    from ductile.runtime.boot import discover
    from ductile.runtime.posture import assess_posture

    loaded = load_config(config_path)
    view = assess_posture(loaded)
    assessment = view.effective
    rows = account_table(loaded, discover(loaded), assessment.enforcing)
    if as_json:
        emit_json({"posture": assessment.verdict.posture, "accounts": rows})
        return
    table(["account", "uid", "gid", "tier", "state_dir", "plugins"],
          [(r["name"], r["uid"], r["gid"], r["tier"], r["state_dir"], ", ".join(r["plugins"]) or "-") for r in rows])
    click.echo(f"posture {view.where}: {assessment.verdict.posture} ({assessment.verdict.cell})", err=True)


@account.command("verify")
@click.argument("names", nargs=-1)
@click.option("--strict", is_flag=True, help="Side-door warnings (a login uid, a sudo rule, ...) count as breaches.")
@config_option
@json_option
@as_unit_option
@click.pass_context
def verify(ctx: click.Context, names: tuple[str, ...], strict: bool, config_path: str | None, as_json: bool,
           as_unit: bool) -> None:
    """Spawn a probe as each account (or NAMES) and report what it could reach, and
    audit what the host grants each uid outside the drop (side doors).

    The probes are spawned by this process, so it needs what the gateway has: run it from
    a root shell with --as-unit to get exactly the unit's user and capabilities.
    Exit 0 when every check held, 1 on any breach, 2 when a check could not run.
    """
    run_as_unit_if_asked(as_unit, config_path)
    from ductile.config import load_config
    from ductile.render import emit_json, table
    from ductile.runtime.verify import verify_accounts

    report = verify_accounts(load_config(config_path), list(names) or None, strict=strict)
    if as_json:
        emit_json(report.as_dict())
    else:
        rows = []
        for a in report.accounts:
            if a.not_run:
                rows.append((a.name, a.uid, "all checks", "", "NOT RUN", a.not_run))
            for c in a.checks:
                mark = {True: c["verdict"], False: f"{c['verdict']} (BREACH)", None: f"{c['verdict']} (not checked)"}[c["ok"]]
                if c.get("warn") and c["ok"] is True:
                    mark = f"{c['verdict']} (--strict refuses)"
                rows.append((a.name, a.uid, c["label"], c["path"], mark, c.get("detail", "")))
        table(["account", "uid", "check", "target", "verdict", "detail"], rows)
        breaches = sum(len(a.breaches) for a in report.accounts)
        skipped = sum(len(a.unverified) for a in report.accounts) + sum(1 for a in report.accounts if a.not_run)
        warned = sum(len(a.warnings) for a in report.accounts)
        verdict = "BREACHED" if breaches else ("INCOMPLETE" if skipped or not report.accounts else "HELD")
        if not report.accounts:
            click.echo("no accounts are configured: there is no wall to verify")
        c = report.containment
        click.echo(f"containment: {c.get('mode')} ({c.get('reason')})")
        click.echo(f"wall {verdict}: {breaches} breach(es), {skipped} check(s) not run, {warned} side-door warning(s) "
                   f"(this process: posture {report.assessment.verdict.posture}, uid {report.assessment.gateway_uid})")
    ctx.exit(report.exit_code())


@account.command("explain")
@click.argument("plugin")
@config_option
@json_option
@as_unit_option
@click.pass_context
def explain(ctx: click.Context, plugin: str, config_path: str | None, as_json: bool, as_unit: bool) -> None:
    """Why PLUGIN runs as what: gate cell, grant source, uid/gid, env, cwd, downgrade.

    The gate is judged for the gateway under its systemd unit when one starts this config,
    whatever this shell holds. Exit 1 when the boot gate would refuse (nothing runs).
    """
    run_as_unit_if_asked(as_unit, config_path)
    import os

    from ductile.config import load_config
    from ductile.explain import containment_info, explain_plugin, landlock_info
    from ductile.privsep import landlock_linux
    from ductile.privsep.accounts import resolve_account
    from ductile.render import emit_json
    from ductile.runtime.boot import discover
    from ductile.runtime.confine import Containment, assess_containment, hard_limits, plugin_facts
    from ductile.runtime.posture import assess_posture

    loaded = load_config(config_path)
    view = assess_containment(loaded.config)
    posture, discovery = assess_posture(loaded), discover(loaded)
    contained = containment_info(loaded, plugin, view, hard_limits())
    abi = landlock_linux.abi()
    resolved = resolve_account(loaded.config, plugin, posture.effective.enforcing)
    found = discovery.plugins.get(plugin)
    ruleset = None
    if found is not None and resolved.confined:
        conf = Containment(view, landlock_abi=abi).confinement_for(
            loaded.config, plugin, resolved,
            plugin_facts(found.directory, found.entrypoint, ":".join(loaded.config.service.plugin_path)))
        ruleset = conf.landlock
    sandbox = landlock_info(loaded, plugin, abi, ruleset, resolved.confined)
    info = explain_plugin(loaded, posture, discovery, plugin, dict(os.environ), contained, sandbox)
    if as_json:
        emit_json(info)
        ctx.exit(0 if info["runs"] else 1)
    gate = info["gate"]
    lines = [
        f"plugin {plugin}: " + ("configured" if info["configured"] else "NOT configured") + (", enabled" if info["enabled"] else ", disabled")
        + (f", entrypoint {info['entrypoint']}" if info["discovered"] else ", NOT discovered in plugin_roots"),
        f"gate {gate['judged']}: {gate['posture']} [{gate['cell']}] {gate['message']}",
    ]
    if info["shell"]:
        lines.append(f"this shell: {info['shell']['label']}, so run here the gate would say {info['shell']['posture']} "
                     f"[{info['shell']['cell']}]; the gateway runs under {gate['unit']}")
    if not info["runs"]:
        lines.append(f"runs as: nothing: the gateway would refuse to start, so no plugin runs (fix: {gate['fix']})")
        click.echo("\n".join(lines))
        ctx.exit(1)
    acct = info["account"]
    who = f"{acct['name']} (uid {acct['uid']}, gid {acct['gid']})" if acct["name"] else "the gateway uid (unconfined)"
    lines += [
        f"runs as: {who}, source {acct['source']}: {acct['why']}",
        f"cwd/HOME: {info['cwd']}",
        f"env: {', '.join(info['env_keys'])}",
        f"lock: {info['lock_state']}; on fingerprint mismatch: {info['on_fingerprint_mismatch']}",
    ]
    if info["cannot_reach"]:
        lines.append("cannot reach: " + "; ".join(info["cannot_reach"]))
    lines.append("can write: " + "; ".join(info["can_write"]))
    c = info["containment"]
    lines.append(f"containment: {c['mode']} ({c['reason']}); every process of a job ends with it")
    for name, how in c["limits"].items():
        lines.append(f"limit {name}: {how}")
    ll = info["landlock"]
    lines.append("landlock: " + "; ".join(f"{k} {v}" for k, v in ll["enforced"].items()))
    if "read" in ll:
        lines.append("landlock read: " + " ".join(ll["read"]))
        lines.append("landlock write: " + " ".join(ll["write"]))
    for hint in ll.get("hints", []):
        lines.append(f"hint: {hint}")
    click.echo("\n".join(lines))
