"""Cross-field configuration rules, as a pure function from the model to findings.

Per-key rules (types, ranges, patterns) live in the model's field specs; what needs more
than one key lives here. Accounts are checked in sorted name order so the first error is
deterministic.
"""

from __future__ import annotations

import posixpath
import re

from ductile.config.model import KEBAB, Config
from ductile.findings import Finding
from ductile.redact import secret_paths

TIERS = ("default", "untrusted")
API_ROUTES = ("/healthz", "/plugins", "/plugin", "/job", "/jobs", "/system", "/metrics")
RISKY_PASSTHROUGH = frozenset({
    "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME",
    "BASH_ENV", "ENV", "PERL5LIB", "PERL5OPT", "RUBYOPT", "RUBYLIB", "NODE_OPTIONS", "NODE_PATH",
    "IFS", "CDPATH", "GCONV_PATH",
})


def _err(category: str, field: str, message: str, fix: str) -> Finding:
    return Finding("error", category, field, message, fix)


def _warn(category: str, field: str, message: str, fix: str) -> Finding:
    return Finding("warning", category, field, message, fix)


def _inside(child: str, parent: str) -> bool:
    return child != parent and child.startswith(parent.rstrip("/") + "/")


def account_rules(config: Config, gateway_uid: int | None) -> list[Finding]:
    out: list[Finding] = []
    seen_uid: dict[int, str] = {}
    seen_gid: dict[int, str] = {}
    seen_dir: dict[str, str] = {}
    for name in sorted(config.accounts):
        acct = config.accounts[name]
        if acct is None:
            continue
        field = f"accounts.{name}"
        if acct.uid is not None:
            if gateway_uid is not None and acct.uid == gateway_uid:
                out.append(_err("accounts", f"{field}.uid",
                                f"uid {acct.uid} is the gateway's own uid — a plugin dropped to it could read the gateway's secrets",
                                "give every account a uid of its own, distinct from the gateway's"))
            if acct.uid in seen_uid:
                out.append(_err("accounts", f"{field}.uid",
                                f"accounts.{seen_uid[acct.uid]} and accounts.{name} share uid {acct.uid} — duplicate uids are false isolation",
                                "give each account its own uid"))
            seen_uid.setdefault(acct.uid, name)
        if acct.gid is not None:
            if acct.gid in seen_gid:
                out.append(_warn("accounts", f"{field}.gid",
                                 f"accounts.{seen_gid[acct.gid]} and accounts.{name} share gid {acct.gid}",
                                 "give each account its own group unless they are meant to share files"))
            seen_gid.setdefault(acct.gid, name)
        if acct.state_dir and acct.state_dir.startswith("/"):
            sd = posixpath.normpath(acct.state_dir)
            if sd == "/":
                out.append(_err("accounts", f"{field}.state_dir", "state_dir must not be /",
                                f"use a private directory such as /var/lib/ductile/accounts/{name}"))
            if sd in seen_dir:
                out.append(_err("accounts", f"{field}.state_dir",
                                f"accounts.{seen_dir[sd]} and accounts.{name} share state_dir {sd} — shared directories are false isolation",
                                "give each account its own state_dir"))
            for other_dir, other in seen_dir.items():
                if _inside(sd, other_dir) or _inside(other_dir, sd):
                    out.append(_err("accounts", f"{field}.state_dir",
                                    f"state_dir {sd} and accounts.{other}'s {other_dir} are nested — one account could reach the other's files",
                                    "use sibling directories, e.g. /var/lib/ductile/accounts/<name>"))
            seen_dir.setdefault(sd, name)
    if config.accounts:
        for tier, why in (("default", "plugins without a run_as grant will run unconfined at the gateway uid"),
                          ("untrusted", "a plugin whose bytes drift from its lock has no downgrade target and its jobs fail")):
            if tier not in config.accounts:
                out.append(_warn("accounts", f"accounts.{tier}", f"no `{tier}` account tier: {why}",
                                 f"add accounts.{tier} with its own uid, gid and state_dir"))
    if config.service.unconfined and config.accounts:
        out.append(_warn("privsep", "service.unconfined",
                         "service.unconfined is true while accounts are configured: no plugin will be dropped to its account",
                         "remove service.unconfined to enforce the accounts, or remove the accounts"))
    return out


def plugin_rules(config: Config) -> list[Finding]:
    out: list[Finding] = []
    for name in sorted(config.plugins):
        pc = config.plugins[name]
        if pc is None:
            continue
        field = f"plugins.{name}"
        if pc.run_as and pc.run_as not in config.accounts:
            defined = ", ".join(sorted(config.accounts)) or "none"
            out.append(_err("accounts", f"{field}.run_as",
                            f"run_as names an undefined account '{pc.run_as}' (defined: {defined}) — a declared wall must be buildable",
                            f"define accounts.{pc.run_as} or grant an existing account"))
        if pc.vault_principal is None and not re.fullmatch(KEBAB, name):
            sev = _err if pc.requires_vault else _warn
            if pc.requires_vault:
                out.append(sev("vault", f"{field}.vault_principal",
                               f"plugin name '{name}' is not a valid vault principal (kebab-case) and requires_vault is set",
                               f"set vault_principal: {re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-') or 'my-plugin'}"))
        if name in RESERVED_PLUGIN_NAMES:
            out.append(_err("plugins", field, f"plugin name '{name}' is reserved: the API scope '{name}:…' names the "
                            "gateway's own routes (system:rw reloads it, metrics:ro reads /metrics)",
                            f"configure the plugin under another name, e.g. plugins.{name}-plugin"))
        if pc.parallelism is not None and pc.parallelism > config.service.max_workers:
            out.append(_warn("plugins", f"{field}.parallelism",
                             f"parallelism {pc.parallelism} is above service.max_workers {config.service.max_workers}, "
                             "which bounds every plugin: it has no effect past that",
                             f"lower it to {config.service.max_workers} or raise service.max_workers"))
        for i, sched in enumerate(pc.schedules):
            if sched is None:
                continue
            sfield = f"{field}.schedules[{i}]"
            kinds = [k for k in ("every", "cron", "at", "after") if getattr(sched, k, None) is not None]
            if len(kinds) != 1:
                got = f"it has {' and '.join(kinds)}" if kinds else "it has none"
                out.append(_err("schedule", sfield, f"a schedule needs exactly one of every, cron, at or after; {got}",
                                "write {every: 5m}, {cron: '0 7 * * *'}, {at: 2026-03-29T09:30:00+02:00} or {after: 10m}"))
            out += schedule_policy_rules(sched, sfield)
            if sched.command == "handle":
                out.append(_err("schedule", f"{sfield}.command", "`handle` runs on events and cannot be scheduled",
                                "schedule poll (the default) or another command"))
    return out


WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
RESERVED_PLUGIN_NAMES = ("system", "metrics")  # API scopes system:rw and metrics:ro name the gateway's own routes


def weekday_number(text: str) -> int:
    """0 (Sunday) .. 6 (Saturday) for ``mon``..``sun`` or a cron digit 0-7."""
    return int(text) % 7 if text.isdigit() else WEEKDAYS.index(text)


def schedule_policy_rules(sched: object, where: str) -> list[Finding]:
    """Policies that cannot all hold at once: a window of no length, a schedule barred on every day."""
    out: list[Finding] = []
    window = getattr(sched, "only_between", None)
    if isinstance(window, str) and "-" in window:
        start, end = window.split("-", 1)
        if start == end:
            out.append(_err("schedule", f"{where}.only_between", f"only_between {window} is a window of no length",
                            "write a start and a different end, e.g. 08:00-18:00 (22:00-06:00 wraps midnight)"))
    days = {weekday_number(d) for d in getattr(sched, "not_on", ()) or () if isinstance(d, str)
            and (d.isdigit() and int(d) <= 7 or d in WEEKDAYS)}
    if len(days) == 7:
        out.append(_err("schedule", f"{where}.not_on", "not_on names every day of the week: the schedule never runs",
                        "remove a day from not_on, or disable the plugin"))
    if getattr(sched, "catch_up", "run_once") == "run_all" and getattr(sched, "every", None) is None \
            and getattr(sched, "cron", None) is None:
        out.append(_warn("schedule", f"{where}.catch_up", "catch_up: run_all has no effect on a one-shot (at/after) "
                         "schedule: it runs once", "remove catch_up, or use skip to drop a one-shot that was missed"))
    return out


def routing_rules(config: Config) -> list[Finding]:
    out: list[Finding] = []
    names: set[str] = set()
    for i, pipe in enumerate(config.pipelines):
        if pipe is None:
            continue
        if pipe.name in names:
            out.append(_err("pipelines", f"pipelines[{i}].name", f"duplicate pipeline name '{pipe.name}'",
                            "give each pipeline a unique name"))
        names.add(pipe.name)
        for k, source in enumerate(pipe.on.sources if pipe.on is not None else ()):
            if source is not None and source not in config.plugins:
                out.append(_err("pipelines", f"pipelines[{i}].on.from[{k}]",
                                f"on.from names plugin '{source}', which is not configured under plugins:",
                                f"add plugins.{source} or fix the name"))
        for j, step in enumerate(pipe.steps):
            if step is not None and step.uses not in config.plugins:
                out.append(_err("pipelines", f"pipelines[{i}].steps[{j}].uses",
                                f"step uses plugin '{step.uses}', which is not configured under plugins:",
                                f"add plugins.{step.uses} or fix the name"))
    paths: set[str] = set()
    for i, hook in enumerate(config.webhooks):
        if hook is None:
            continue
        if hook.path in paths:
            out.append(_err("webhooks", f"webhooks[{i}].path", f"duplicate webhook path {hook.path}",
                            "give each webhook its own path"))
        paths.add(hook.path)
        if any(hook.path == r or hook.path.startswith(r + "/") for r in API_ROUTES):
            out.append(_err("webhooks", f"webhooks[{i}].path", f"{hook.path} collides with an API route",
                            "use a path under /hooks/"))
        if hook.plugin not in config.plugins:
            out.append(_err("webhooks", f"webhooks[{i}].plugin",
                            f"webhook targets plugin '{hook.plugin}', which is not configured under plugins:",
                            f"add plugins.{hook.plugin} or fix the name"))
    tokens: set[str] = set()
    for i, tok in enumerate(config.api.tokens):
        if tok is None:
            continue
        if tok.name in tokens:
            out.append(_err("api", f"api.tokens[{i}].name", f"duplicate token name '{tok.name}'",
                            "give each token a unique name"))
        tokens.add(tok.name)
        for j, scope in enumerate(tok.scopes):
            plugin = scope.split(":", 1)[0] if scope and scope != "*" else None
            if plugin and plugin not in config.plugins:
                out.append(_warn("api", f"api.tokens[{i}].scopes[{j}]",
                                 f"scope names plugin '{plugin}', which is not configured", "fix the plugin name"))
    if config.api.enabled and not config.api.tokens:
        out.append(_warn("api", "api.tokens", "the API has no tokens: every endpoint except /healthz will refuse requests",
                         "add api.tokens with a secret_ref into the vault, or set api.enabled: false"))
    return out


def service_rules(config: Config) -> list[Finding]:
    out = []
    for i, name in enumerate(config.service.plugin_env_passthrough):
        if name in RISKY_PASSTHROUGH:
            out.append(_warn("service", f"service.plugin_env_passthrough[{i}]",
                             f"{name} lets the gateway's environment change what code a plugin loads",
                             f"remove {name} unless every plugin must see it"))
    return out


def secret_rules(config: Config) -> list[Finding]:
    """A schedule payload under a secret-looking key: the payload is stored with every job it
    queues (the ledger shows it redacted, but the database and its backups hold it)."""
    out = []
    for name in sorted(config.plugins):
        pc = config.plugins[name]
        if pc is None:
            continue
        for i, sched in enumerate(pc.schedules):
            if sched is None:
                continue
            for path in secret_paths(sched.payload):
                field = f"plugins.{name}.schedules[{i}].payload.{path}"
                out.append(_warn("secrets", field,
                                 f"schedule payload key '{path}' looks like a secret: every job this schedule queues "
                                 "stores it in the state database (shown redacted, but kept)",
                                 f"keep it in the vault instead (value on stdin: ductile vault set NAME --grant "
                                 f"{pc.vault_principal or name}); the plugin reads it from the request's secrets"))
    return out


def config_rules(config: Config, gateway_uid: int | None) -> list[Finding]:
    """Every cross-field rule; ``gateway_uid`` is the uid ductile will run as (None: unknown)."""
    return (account_rules(config, gateway_uid) + plugin_rules(config) + routing_rules(config) + service_rules(config)
            + secret_rules(config))
