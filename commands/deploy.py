"""Render the systemd files (sysusers, tmpfiles, unit, backup service and timer) from the config.

One source of truth: each account's uid, gid and state_dir live in ``accounts:`` and are
written into the artefacts from there, never copied by hand.
"""

from __future__ import annotations

import click

from ductile.cliopts import config_option, json_option

# ductile.deploy.ARTEFACTS, without importing it for --help
ARTEFACT_CHOICES = ("sysusers", "tmpfiles", "unit", "backup-service", "backup-timer")


@click.group()
def deploy() -> None:
    """Render the systemd files (sysusers, tmpfiles, unit, backup service and timer) from the config."""


@deploy.command("render")
@click.argument("artefact", type=click.Choice(ARTEFACT_CHOICES))
@config_option
@click.option("--gateway-user", default="ductile", show_default=True, metavar="NAME",
              help="The system user the gateway runs as; also names the unit and the .conf files.")
@click.option("--config-dir", metavar="DIR", default=None,
              help="Where the config directory will be on the host (default: the directory of the loaded "
                   "config). Use it when rendering from a draft kept elsewhere.")
@json_option
def render(artefact: str, config_path: str | None, gateway_user: str, config_dir: str | None,
           as_json: bool) -> None:
    """Print ARTEFACT (sysusers, tmpfiles, unit, backup-service or backup-timer) for this config on stdout.

    \b
    Install the output where it belongs, for example:
      ductile deploy render sysusers > /etc/sysusers.d/ductile.conf
      ductile deploy render tmpfiles > /etc/tmpfiles.d/ductile.conf
      ductile deploy render unit     > /etc/systemd/system/ductile.service
      ductile deploy render backup-service > /etc/systemd/system/ductile-backup.service
      ductile deploy render backup-timer   > /etc/systemd/system/ductile-backup.timer
    """
    import sys

    from ductile.deploy import install_path, render_config
    from ductile.render import emit_json

    text, loaded, layout = render_config(artefact, config_path, gateway_user=gateway_user, config_dir=config_dir)
    if as_json:
        emit_json({"artefact": artefact, "config": loaded.path, "install_path": install_path(artefact, layout),
                   "text": text})
    else:
        sys.stdout.write(text)
