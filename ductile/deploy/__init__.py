"""Deployment artefacts rendered from the config, so each account's uid, gid and state_dir
are written once (in ``accounts:``) and never hand-copied into systemd files.

``plan_layout`` (pure: config in, ``Layout`` out, or a refusal naming the field) decides
users, directories, modes and owners; ``render`` prints one artefact of that layout.
``layout_for`` is the same for a ``LoadedConfig``, with file:line in refusals.
"""

from __future__ import annotations

from collections.abc import Callable

from ductile.config.load import LoadedConfig
from ductile.deploy.backup import render_backup_service, render_backup_timer
from ductile.deploy.layout import (
    DEFAULT_GATEWAY_USER,
    DEFAULT_VENV,
    Account,
    Directory,
    Layout,
    plan_layout,
)
from ductile.deploy.sysusers import render_sysusers
from ductile.deploy.tmpfiles import render_tmpfiles
from ductile.deploy.unit import render_unit
from ductile.errors import ConfigError

RENDERERS: dict[str, Callable[[Layout], str]] = {
    "sysusers": render_sysusers,
    "tmpfiles": render_tmpfiles,
    "unit": render_unit,
    "backup-service": render_backup_service,
    "backup-timer": render_backup_timer,
}
ARTEFACTS = tuple(RENDERERS)

__all__ = [
    "ARTEFACTS", "DEFAULT_GATEWAY_USER", "DEFAULT_VENV", "Account", "Directory", "Layout",
    "install_path", "layout_for", "plan_layout", "render", "render_backup_service", "render_backup_timer",
    "render_config", "render_sysusers", "render_tmpfiles", "render_unit",
]


def render(artefact: str, layout: Layout) -> str:
    """The text of ``artefact`` (one of ``ARTEFACTS``) for ``layout``."""
    return RENDERERS[artefact](layout)


def install_path(artefact: str, layout: Layout) -> str:
    """Where the artefact belongs on the host (locally administered files live in /etc)."""
    return {
        "sysusers": f"/etc/sysusers.d/{layout.conf_name}",
        "tmpfiles": f"/etc/tmpfiles.d/{layout.conf_name}",
        "unit": f"/etc/systemd/system/{layout.unit_name}",
        "backup-service": f"/etc/systemd/system/{layout.backup_unit_name}",
        "backup-timer": f"/etc/systemd/system/{layout.backup_timer_name}",
    }[artefact]


def render_config(artefact: str, config_path: str | None, *, gateway_user: str = DEFAULT_GATEWAY_USER,
                  config_dir: str | None = None) -> tuple[str, LoadedConfig, Layout]:
    """Load the config at ``config_path`` and render ``artefact`` for it: what
    ``ductile deploy render`` prints, and what deploy/install.sh installs."""
    from ductile.config.load import load_config
    from ductile.deploy.host import gateway_uid_for

    loaded = load_config(config_path, gateway_uid=gateway_uid_for(gateway_user))
    layout = layout_for(loaded, config_dir=config_dir, gateway_user=gateway_user)
    return render(artefact, layout), loaded, layout


def layout_for(loaded: LoadedConfig, *, config_dir: str | None = None,
               gateway_user: str = DEFAULT_GATEWAY_USER, venv: str = DEFAULT_VENV) -> Layout:
    """``plan_layout`` for a loaded config; ``config_dir`` defaults to where it was loaded
    from. A refusal about a config field also names the file and line that set it."""
    try:
        return plan_layout(loaded.config, config_dir=config_dir or loaded.directory,
                           gateway_user=gateway_user, venv=venv)
    except ConfigError as err:
        where = loaded.where(err.where)
        if not where:
            raise
        raise ConfigError(err.message, where=f"{where}: {err.where}", fix=err.fix) from None
