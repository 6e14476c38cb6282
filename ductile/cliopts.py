"""Options every noun shares, so they read and behave the same everywhere."""

from __future__ import annotations

import click

config_option = click.option(
    "--config", "-c", "config_path", metavar="PATH", default=None,
    help="Config file, or a directory holding config.yaml (default: $DUCTILE_CONFIG_DIR, "
         "~/.config/ductile, /etc/ductile).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
