"""Join what discovery found with what the operator configured.

``plugin list`` shows the rows; ``doctor`` reports the mismatches: a configured plugin that
was not found or was refused (it cannot run), a found plugin nobody configured (it never
runs), required config keys left unset, and schedules, pipeline steps or webhooks asking for
a command the plugin does not declare. The joins are pure; ``discover_for_config`` is the
one call that reaches the disk.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ductile.config import LoadedConfig
from ductile.config.model import Config
from ductile.findings import Finding
from ductile.plugins.discovery import Discovery, discover_plugins
from ductile.privsep.trust import Owners

RowStatus = Literal["ok", "skipped", "missing"]


def account_uids(config: Config) -> frozenset[int]:
    """Uids that must not own plugin code: every configured account's."""
    return frozenset(account.uid for account in config.accounts.values())


def plugin_search_path(config: Config, gateway_env: Mapping[str, str] | None = None) -> str:
    """The PATH a plugin of this gateway may get (what ``#!/usr/bin/env`` searches):
    ``service.plugin_path`` as configured, before the spawn drops the entries one account
    cannot traverse — every entry is judged, since any account may be given it. The
    gateway's own PATH never reaches a plugin (``gateway_env`` is kept for callers)."""
    return ":".join(config.service.plugin_path)


def discover_for_config(config: Config, gateway_env: Mapping[str, str] | None = None) -> Discovery:
    owners = Owners.of(account_uids(config), os.geteuid())
    return discover_plugins(config.plugin_roots, owners=owners, search_path=plugin_search_path(config, gateway_env))


@dataclass(frozen=True)
class PluginRow:
    """One line of ``plugin list``."""

    name: str
    status: RowStatus        # ok: trusted and runnable; skipped: found but refused; missing: configured, not found
    configured: bool
    enabled: bool            # the config's switch (a plugin nobody configured never runs)
    grant: str               # plugins.<name>.run_as, or "-" (default tier / unconfined)
    lock: str                # fingerprint lock status (SPEC §6); "-" until locks are recorded
    directory: str
    commands: tuple[str, ...]
    problems: tuple[Finding, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "status": self.status, "configured": self.configured, "enabled": self.enabled,
            "grant": None if self.grant == "-" else self.grant, "lock": None if self.lock == "-" else self.lock,
            "directory": None if self.directory == "-" else self.directory, "commands": list(self.commands),
            "problems": [f.as_dict() for f in self.problems],
        }


def plugin_rows(config: Config, discovery: Discovery, locks: dict[str, str] | None = None) -> list[PluginRow]:
    """Every plugin found, refused or configured, sorted by name; ``locks``: lock state by name."""
    rows: list[PluginRow] = []

    def settings(name: str) -> tuple[bool, bool, str]:
        pc = config.plugins.get(name)
        if pc is None:
            return False, False, "-"
        return True, pc.enabled, pc.run_as or "-"

    for name, plugin in discovery.plugins.items():
        configured, enabled, grant = settings(name)
        lock = (locks or {}).get(name, "-")
        rows.append(PluginRow(name, "ok", configured, enabled, grant, "-" if lock == "no-lock" else lock, plugin.directory,
                              plugin.manifest.command_names))
    for skip in discovery.skipped:
        name = skip.name or f"? ({os.path.basename(os.path.dirname(skip.manifest_path))})"
        configured, enabled, grant = settings(name)
        rows.append(PluginRow(name, "skipped", configured, enabled, grant, "-",
                              os.path.dirname(skip.manifest_path), (), skip.findings))
    named = {row.name for row in rows}
    for name in config.plugins:
        if name not in named:
            configured, enabled, grant = settings(name)
            rows.append(PluginRow(name, "missing", configured, enabled, grant, "-", "-", ()))
    order = {"ok": 0, "skipped": 1, "missing": 2}
    return sorted(rows, key=lambda r: (r.name, order[r.status]))


def inventory_findings(config: Config, discovery: Discovery) -> list[Finding]:
    """Mismatches between config and discovery, located by config field (no file:line yet)."""
    out: list[Finding] = []
    skipped_names = {s.name for s in discovery.skipped if s.name}
    for name, pc in config.plugins.items():
        field = f"plugins.{name}"
        if name in discovery.plugins:
            continue
        severity: Literal["error", "warning"] = "error" if pc.enabled else "warning"
        if name in skipped_names:
            out.append(Finding(severity, "plugin", field,
                               f"plugin {name} is configured but was refused by the trust checks, so it cannot run",
                               "fix the trust finding reported for its manifest"))
        else:
            roots = ", ".join(config.plugin_roots) or "no plugin_roots"
            unread = sum(1 for s in discovery.skipped if s.name is None)
            hint = f" ({unread} manifest(s) could not be read; see their findings)" if unread else ""
            out.append(Finding(severity, "plugin", field,
                               f"plugin {name} is configured but no manifest.yaml names it under {roots}{hint}",
                               f"install the plugin under a plugin root or remove plugins.{name}"))
    for name, plugin in sorted(discovery.plugins.items()):
        settings = config.plugins.get(name)
        if settings is None:
            out.append(Finding("info", "plugin", f"plugins.{name}",
                               f"plugin {name} at {plugin.directory} is discovered but not configured, so it never runs",
                               f"add plugins.{name} to the config to use it"))
            continue
        if settings.parallelism is not None and settings.parallelism > 1 and not plugin.manifest.concurrency_safe:
            out.append(Finding("warning", "plugin", f"plugins.{name}.parallelism",
                               f"plugin {name}'s manifest says concurrency_safe: false, but parallelism "
                               f"{settings.parallelism} lets {settings.parallelism} of its jobs run at once",
                               "remove parallelism (one job at a time) unless you know the plugin is safe to overlap"))
        missing = [k for k in plugin.manifest.config_keys_required if k not in settings.config]
        if missing:
            out.append(Finding("warning", "plugin", f"plugins.{name}.config",
                               f"plugin {name} requires config key(s) {', '.join(missing)}, which are not set",
                               f"set them under plugins.{name}.config"))
    out += _command_findings(config, discovery)
    out += _pipeline_findings(config, discovery)
    return out


def _pipeline_findings(config: Config, discovery: Discovery) -> list[Finding]:
    """A pipeline any plugin can start (no ``on.from``) that runs a write command: any plugin
    that emits the event type can make the step act with its own account and secrets."""
    out = []
    for i, pipe in enumerate(config.pipelines):
        if pipe.on.sources:
            continue
        writes = []
        for step in pipe.steps:
            plugin = discovery.plugins.get(step.uses)
            spec = plugin.manifest.command(step.command) if plugin is not None else None
            if spec is not None and spec.type == "write":
                writes.append(f"{step.uses} {step.command}")
        if writes:
            out.append(Finding("warning", "pipelines", f"pipelines[{i}].on",
                               f"pipeline {pipe.name} starts on {pipe.on.event} from any plugin and runs write "
                               f"command(s) {', '.join(writes)}: any plugin that emits that type can trigger them",
                               f"bind it to the plugin that emits the event: on: {{event: {pipe.on.event}, from: "
                               f"<plugin>}}"))
    return out


def _command_findings(config: Config, discovery: Discovery) -> list[Finding]:
    """Every place the config names a command must name one the plugin declares."""
    wanted: list[tuple[str, str, str]] = []  # (plugin, command, field)
    for name, pc in config.plugins.items():
        for i, sched in enumerate(pc.schedules):
            wanted.append((name, sched.command, f"plugins.{name}.schedules[{i}].command"))
    for i, pipe in enumerate(config.pipelines):
        for j, step in enumerate(pipe.steps):
            wanted.append((step.uses, step.command, f"pipelines[{i}].steps[{j}].command"))
    for i, hook in enumerate(config.webhooks):
        wanted.append((hook.plugin, hook.command, f"webhooks[{i}].command"))
    out = []
    for plugin_name, command, field in wanted:
        plugin = discovery.plugins.get(plugin_name)
        if plugin is None or plugin.manifest.command(command) is not None:
            continue  # an undiscovered plugin is reported once, above
        declared = ", ".join(plugin.manifest.command_names)
        out.append(Finding("error", "plugin", field,
                           f"plugin {plugin_name} does not declare command '{command}' (it declares {declared})",
                           f"use one of: {declared}, or add the command to {plugin.manifest_path}"))
    return out


def plugin_findings(loaded: LoadedConfig) -> list[Finding]:
    """The doctor section: discovery problems and config/discovery mismatches, with file:line."""
    discovery = discover_for_config(loaded.config)
    out: list[Finding] = []
    missing = set(discovery.missing_roots)
    for f in discovery.findings:
        if f.field.startswith("plugin_roots["):
            index = int(f.field[len("plugin_roots["):-1])
            if loaded.config.plugin_roots[index] in missing:
                continue  # doctor's host section already reports a missing root, with its line
            f = Finding(f.severity, f.category, f.field, f.message, f.fix, f.where or loaded.where(f.field))
        out.append(f)
    for f in inventory_findings(loaded.config, discovery):
        out.append(Finding(f.severity, f.category, f.field, f.message, f.fix, loaded.where(f.field)))
    return out
