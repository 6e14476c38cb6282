"""The backup service and timer `deploy render` writes: the command they run is one the CLI
accepts, it runs as the gateway user with no privilege, and it writes where tmpfiles makes
a private directory for it."""

from __future__ import annotations

import re
import shlex

from conftest import REPO

from ductile.deploy.layout import BACKUP_KEEP

SYSTEMD = REPO / "deploy" / "systemd"


def _exec_start(name: str) -> list[str]:
    m = re.search(r"^ExecStart=(.+)$", (SYSTEMD / name).read_text(), re.M)
    assert m
    return shlex.split(m.group(1))


def test_the_service_runs_a_command_the_cli_accepts() -> None:
    from ductile_commands.system import system

    argv = _exec_start("ductile-backup.service")
    assert argv[0] == "/opt/ductile/venv/bin/ductile" and argv[1:3] == ["system", "backup"]
    ctx = system.make_context("system", argv[1:], resilient_parsing=False)  # parses, never runs
    sub = system.get_command(ctx, "backup")
    assert sub is not None
    params = sub.make_context("backup", argv[3:]).params
    assert params == {"to": "/var/backups/ductile/", "scope": "plugins", "keep": BACKUP_KEEP,
                      "config_path": "/etc/ductile", "as_json": False}


def test_the_service_is_the_gateway_user_with_nothing_else() -> None:
    text = (SYSTEMD / "ductile-backup.service").read_text()
    for line in ("User=ductile", "Group=ductile", "CapabilityBoundingSet=\n", "NoNewPrivileges=yes",
                 "ReadWritePaths=/var/backups/ductile /var/lib/ductile", "UMask=0077", "Type=oneshot"):
        assert line in text, line
    assert "AmbientCapabilities" not in text
    tmpfiles = (SYSTEMD / "ductile.tmpfiles.conf").read_text()
    assert re.search(r"^d /var/backups/ductile\s+0700 ductile\s+ductile\s+-$", tmpfiles, re.M)


def test_the_timer_names_its_service_and_survives_downtime() -> None:
    text = (SYSTEMD / "ductile-backup.timer").read_text()
    assert "Persistent=true" in text and "OnCalendar=daily" in text and "WantedBy=timers.target" in text
    assert "ductile-backup.service" in text
    admin = (SYSTEMD / "ductile-admin-backup.service").read_text()
    assert "User=ductile-admin" in admin and "--to /var/backups/ductile-admin/" in admin
