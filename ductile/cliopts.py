"""Options every noun shares, so they read and behave the same everywhere."""

from __future__ import annotations

import click

config_option = click.option(
    "--config", "-c", "config_path", metavar="PATH", default=None,
    help="Config file, or a directory holding config.yaml (default: $DUCTILE_CONFIG_DIR, "
         "~/.config/ductile, /etc/ductile).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
as_unit_option = click.option(
    "--as-unit", "as_unit", is_flag=True,
    help="Re-run this command as the systemd unit that starts this config runs the gateway: its User=, "
         "its capabilities and umask, through setpriv (from a root shell).",
)


def run_as_unit_if_asked(as_unit: bool, config_path: str | None) -> None:
    """With --as-unit, replace this process by the same command run as the unit would (never returns)."""
    if not as_unit:
        return
    from ductile.config import load_config
    from ductile.runtime.asunit import reexec_as_unit

    loaded = load_config(config_path)
    reexec_as_unit(loaded.directory, loaded.path)
