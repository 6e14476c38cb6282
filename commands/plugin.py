"""Discover plugins and show their trust, configuration and grants.

Thin by design: discovery, trust and the config join live in ``ductile.plugins``; this
module parses options and renders. New subcommands (``run``, ``lock``) attach to the
``plugin`` group below with ``@plugin.command(...)``.
"""

from __future__ import annotations

import click

from ductile.cliopts import config_option, json_option


@click.group()
def plugin() -> None:
    """Discover plugins and show their trust, configuration and grants."""


@plugin.command("list")
@config_option
@json_option
def list_plugins(config_path: str | None, as_json: bool) -> None:
    """List plugins: trusted or skipped, configured, enabled, grant, lock.

    Plugins refused by the trust checks are listed as skipped, with the reason and the fix.
    """
    from ductile.config import load_config
    from ductile.plugins.inventory import discover_for_config, plugin_rows
    from ductile.render import emit_json, say, table

    loaded = load_config(config_path)
    discovery = discover_for_config(loaded.config)
    rows = plugin_rows(loaded.config, discovery)
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
