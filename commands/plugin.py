"""Discover, create, test and run plugins; record their locks.

Thin by design: discovery, trust and the config join live in ``ductile.plugins``, the
scaffold in ``ductile.plugins.scaffold``, fixture runs in ``ductile.runtime.plugintest``;
this module parses options and renders.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from ductile.cliopts import as_unit_option, config_option, json_option, run_as_unit_if_asked

if TYPE_CHECKING:
    from ductile.runtime.executor import JobResult


@click.group()
def plugin() -> None:
    """Discover, create, test and run plugins; record their locks."""


@plugin.command("list")
@config_option
@json_option
def list_plugins(config_path: str | None, as_json: bool) -> None:
    """List plugins: trusted or skipped, configured, enabled, grant, lock.

    Plugins refused by the trust checks are listed as skipped, with the reason and the fix.
    """
    from ductile.config import load_config
    from ductile.lock import lock_states
    from ductile.plugins.inventory import discover_for_config, plugin_rows
    from ductile.render import emit_json, say, table

    loaded = load_config(config_path)
    discovery = discover_for_config(loaded.config)
    rows = plugin_rows(loaded.config, discovery, lock_states(loaded, discovery))
    if as_json:
        emit_json({
            "config": loaded.path,
            "plugin_roots": list(loaded.config.plugin_roots),
            "plugins": [row.as_dict() for row in rows],
            "findings": [f.as_dict() for f in discovery.findings],
        })
        return
    if rows:
        table(["name", "status", "configured", "enabled", "grant", "lock", "commands", "directory"],
              [(r.name, r.status, _yes(r.configured), _yes(r.enabled), r.grant, r.lock,
                ",".join(r.commands) or "-", r.directory) for r in rows],
              styles={"name": "bold"})
    else:
        say(f"no plugins found under {', '.join(loaded.config.plugin_roots) or 'no plugin_roots'}", err=False)
    for f in discovery.findings:
        if f.severity != "info":
            say(f"{f.severity}: {f.location()}: {f.message}" + (f" (fix: {f.fix})" if f.fix else ""), err=False)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


@plugin.command("run")
@click.argument("name")
@click.option("--command", "-C", "command", default="poll", show_default=True, help="Plugin command to run.")
@click.option("--payload", default="{}", metavar="JSON", help="Payload object: inline JSON, @FILE, or - for stdin.")
@config_option
@json_option
@as_unit_option
@click.pass_context
def run(ctx: click.Context, name: str, command: str, payload: str, config_path: str | None, as_json: bool,
        as_unit: bool) -> None:
    """Run one job now, through the same gate, reconcile, resolve and spawn path as serve.

    This process is the gateway for that job: from a root shell, --as-unit runs it with
    the unit's user and capabilities, as serve would.
    Prints the plugin's response on stdout; on stderr, the account and uid it ran as.
    Exit 0 when the job succeeded, 1 otherwise (a refused gate runs nothing).
    """
    run_as_unit_if_asked(as_unit, config_path)
    from ductile.config import load_config
    from ductile.render import emit_json, say
    from ductile.runtime.oneshot import parse_payload, run_once

    result, runtime = run_once(load_config(config_path), name, command, parse_payload(payload))
    say(runtime.posture_line())
    for _, line in runtime.notes(warnings=False):
        say(line)
    say(f"ran {name} {command} as {result.account.describe() if result.account else 'nothing (refused before spawn)'}"
        + (f", pid {result.pid}" if result.pid else ""))
    if as_json:
        emit_json(result.as_dict())
    report_run(result, human=not as_json)
    ctx.exit(0 if result.outcome.status == "succeeded" else 1)


def report_run(result: JobResult, *, human: bool = True) -> None:
    """The human account of one run: the result on stdout when it succeeded; on stderr the
    plugin's log lines, the gateway's warnings and, when it failed, the error and the end of
    its stderr (the reason is often in one of those, not in a result that is null). With
    ``--json`` (human False) stdout is the JSON alone and stderr keeps only the error line."""
    from ductile.render import emit_json, say

    out = result.outcome
    response = out.response
    if not human:
        if out.error is not None:
            say(f"ductile: job {out.status}: {out.error.one_line()}")
        return
    if out.status == "succeeded" and response is not None:
        emit_json(response.result)
    for entry in response.logs if response is not None else ():
        say(f"plugin {entry.level}: {entry.message}")
    for warning in out.warnings:
        say(f"warning: {warning}")
    if out.error is None:
        return
    if response is None and out.stderr_tail.strip():
        say("plugin stderr (last lines):")
        for line in out.stderr_tail.rstrip().splitlines()[-10:]:
            say(f"  {line}")
    say(f"ductile: job {out.status}: {out.error.one_line()}")


@plugin.command("new")
@click.argument("name")
@click.option("--lang", type=click.Choice(["python", "sh"]), default="python", show_default=True,
              help="Language of the entrypoint (python: /usr/bin/python3, standard library only; sh: /bin/sh).")
@click.option("--dir", "directory", metavar="DIR", default=".", show_default=True,
              help="Where to create the plugin's directory NAME (e.g. a plugin root such as /opt/ductile/plugins).")
def new(name: str, lang: str, directory: str) -> None:
    """Create a plugin that honours the confined runtime contract: manifest, entrypoint, fixtures.

    Writes DIR/NAME/manifest.yaml, run.py (or run.sh) and fixtures/<command>.json; refuses an
    existing path. Then configure it, `ductile plugin test NAME`, `ductile plugin lock NAME`.
    """
    from ductile.plugins.scaffold import scaffold, unreachable_ancestor, write_scaffold
    from ductile.render import say

    target = write_scaffold(os.path.join(directory, name), scaffold(name, "sh" if lang == "sh" else "python"))
    for f in sorted(os.listdir(target)):
        say(f"created {os.path.join(target, f)}", err=False)
    blocked = unreachable_ancestor(target)
    if blocked is not None:
        say(f"warning: {blocked} is not traversable by other users (no o+x): the plugin's account will not "
            f"reach {target}; move it under a plugin root such as /opt/ductile/plugins")
    say("next:", err=False)
    say(f"  1. make {os.path.dirname(target)} a plugin root (plugin_roots) and add to the config:", err=False)
    say(f"       plugins: {{{name}: {{run_as: default}}}}", err=False)
    say(f"  2. ductile plugin test {name}      # runs its fixtures, confined", err=False)
    say(f"  3. ductile plugin lock {name}      # records its fingerprint", err=False)
    say(f"  4. ductile plugin run {name} -C poll", err=False)


@plugin.command("test")
@click.argument("name")
@click.option("--command", "-C", "command", default=None, metavar="CMD",
              help="Test only this command (its fixture, or --payload). Default: every command with a fixture.")
@click.option("--payload", default=None, metavar="JSON", help="Payload for --command: inline JSON, @FILE, or - for stdin.")
@config_option
@json_option
@click.pass_context
def test(ctx: click.Context, name: str, command: str | None, payload: str | None, config_path: str | None,
         as_json: bool) -> None:
    """Run a plugin's commands confined against its fixtures and check each answer.

    Each fixtures/<command>.json names the payload (and optionally state and event) and what the
    answer must be (status, a subset of result, event types). Runs go through the same path as
    serve; nothing is recorded. Exit 0 when every run passes, 1 otherwise.
    """
    from ductile.config import load_config
    from ductile.render import emit_json, say
    from ductile.runtime.oneshot import parse_payload
    from ductile.runtime.plugintest import run_fixtures

    verdicts, runtime = run_fixtures(load_config(config_path), name, command,
                                     parse_payload(payload) if payload is not None else None)
    passed = sum(v.passed for v in verdicts)
    if as_json:
        emit_json({"plugin": name, "passed": passed, "failed": len(verdicts) - passed,
                   "runs": [v.as_dict() for v in verdicts]})
    else:
        say(runtime.posture_line())
        for v in verdicts:
            acct = v.result.account
            who = acct.describe() if acct else "nothing (refused before spawn)"
            if v.passed:
                say(f"PASS {name} {v.case.command} ({v.case.source}) as {who} in {v.seconds:.2f}s", err=False)
                continue
            say(f"FAIL {name} {v.case.command} ({v.case.source}) as {who}:", err=False)
            for problem in v.problems:
                say(f"  - {problem}", err=False)
            response = v.result.outcome.response
            for entry in response.logs if response is not None else ():
                say(f"    plugin {entry.level}: {entry.message}", err=False)
            if response is None and v.result.outcome.stderr_tail.strip():
                for line in v.result.outcome.stderr_tail.rstrip().splitlines()[-5:]:
                    say(f"    stderr: {line}", err=False)
        if any(v.result.binding is not None and v.result.binding.downgraded_from for v in verdicts):
            say(f"note: {name} is not locked while other plugins are, so it ran downgraded to the untrusted "
                f"account; once it passes: ductile plugin lock {name}", err=False)
        say(f"{passed}/{len(verdicts)} passed", err=False)
    ctx.exit(0 if passed == len(verdicts) else 1)


@plugin.command("lock")
@click.argument("name", required=False)
@click.option("--all", "all_code", is_flag=False, flag_value="", default=None, metavar="[CODE]",
              help="List what locking every configured plugin would change, with a confirmation code; "
                   "with that CODE, write it.")
@click.option("--verbose", "-v", is_flag=True, help="List the changed files of each plugin, not only the plugin.")
@config_option
@json_option
def lock(name: str | None, all_code: str | None, verbose: bool, config_path: str | None, as_json: bool) -> None:
    """Record keyed fingerprints of everything a plugin executes in <config dir>/.checksums.

    Every file of the plugin's directory (bytecode caches aside) and every program of its
    #! chain. `plugin lock NAME` records one plugin. `plugin lock --all` lists what it would
    change (+ new / ~ changed / - removed per plugin, with each entrypoint; per file with
    --verbose) and prints a 5-character code; `plugin lock --all CODE` writes the lock only
    if the plugins still match that list. With nothing to change there is no code to ask for.
    """
    from ductile.config import load_config
    from ductile.errors import UsageError
    from ductile.lock import commit_all, lock_one, preview_all, vault_nonce
    from ductile.plugins.inventory import discover_for_config
    from ductile.privsep.fingerprint import file_changes
    from ductile.render import emit_json, say

    if (name is None) == (all_code is None):
        raise UsageError("give either a plugin NAME or --all", where="plugin lock",
                         fix="`ductile plugin lock echo` or `ductile plugin lock --all`")
    loaded = load_config(config_path)
    discovery = discover_for_config(loaded.config)
    key = vault_nonce(loaded)
    if name is not None:
        fp, what = lock_one(loaded, discovery, key, name)
        if as_json:
            emit_json({"plugin": name, "change": what, "directory": fp.directory, "files": dict(fp.files),
                       "interpreter": [{"path": p, "hash": h} for p, h in fp.interpreter]})
        else:
            say(f"locked {name} ({what}): {len(fp.files)} file(s) in {fp.directory}"
                + (f", interpreter {' -> '.join(p for p, _ in fp.interpreter)}" if fp.interpreter else ""), err=False)
        return
    preview = commit_all(loaded, discovery, key, all_code) if all_code else preview_all(loaded, discovery, key)
    d = preview.diff
    changes = bool(d.added or d.changed or d.removed)

    def details(plugin: str) -> list[tuple[str, str]]:
        now, then = preview.entries.get(plugin), preview.previous.get(plugin)
        if now is None:
            return []
        if then is None:
            return [("+", path) for path, _ in now.files] + [("+", f"interpreter {p}") for p, _ in now.interpreter]
        return file_changes(now, then)

    if as_json:
        emit_json({"lock_file": preview.lock_file, "code": preview.code if changes or all_code else None,
                   "committed": bool(all_code), "changes": changes, "outdated_format": preview.outdated,
                   "added": list(d.added), "changed": list(d.changed), "removed": list(d.removed),
                   "unchanged": list(d.unchanged),
                   "files": {n: [f"{sign} {what}" for sign, what in details(n)] for n in (*d.added, *d.changed)}})
        return
    if preview.outdated:
        say("the lock file has format 1 (manifest and entrypoint only): every plugin is relocked in format 2", err=False)
    for sign, label, names in (("+", "new", d.added), ("~", "changed", d.changed), ("-", "removed", d.removed)):
        for n in names:
            where = f"  ({preview.entries[n].entrypoint})" if n in preview.entries else ""
            say(f"{sign} {label:<8} {n}{where}", err=False)
            if verbose:
                for fsign, what in details(n):
                    say(f"    {fsign} {what}", err=False)
    if all_code:
        say(f"wrote {preview.lock_file} ({len(preview.entries)} plugin(s))", err=False)
    elif changes:
        say(f"confirmation code: {preview.code}  (write it with: ductile plugin lock --all {preview.code})", err=False)
    elif not preview.entries:
        say(f"nothing to lock: no configured plugin was discovered under "
            f"{', '.join(loaded.config.plugin_roots) or 'plugin_roots'} (`ductile plugin list` shows what was found)",
            err=False)
    else:
        say(f"no changes: {len(d.unchanged)} plugin(s) already locked; nothing to write", err=False)
