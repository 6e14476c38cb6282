"""systemd.service(5) and systemd.timer(5) text for the scheduled backup. Pure.

``ductile system backup`` runs as the gateway user with no privilege at all, reads what the
gateway owns (a consistent snapshot of the state database even while the gateway writes),
never the age key, and writes one archive into ``/var/backups/<gateway user>`` (0700, a
line of the tmpfiles file), keeping the newest few. The comments carry the reasons, so the
installed files explain themselves.
"""

from __future__ import annotations

from ductile.deploy.layout import BACKUP_KEEP, BACKUP_SCOPE, Layout
from ductile.deploy.unit import KERNEL_PROTECTIONS

SERVICE = """\
# {unit}: one backup of the {user} gateway (systemd.service(5)).
# Rendered by `ductile deploy render backup-service`; started by {timer}.
# Install as /etc/systemd/system/{unit}; run one now with `systemctl start {unit}`.
#
# `ductile system backup` as {user}: the state database (a consistent snapshot, taken while
# the gateway runs), the config and its includes, the plugin lock, the vault and the plugin
# roots (--scope {scope}); never the age key, nothing under a secret/ directory. One archive
# per run in {backup_dir} (0700), named <service>-<scope>-<UTC time>-<pairing code>.tar.gz;
# the {keep} newest are kept. The pairing code names the age key that opens the archive's
# vault: keep an offline copy of each key under its code. Restore: ductile-system(1).

[Unit]
Description=ductile backup of {user} (database, config, vault, plugins; never the age key)
Documentation=man:ductile-system(1)

[Service]
Type=oneshot
User={user}
Group={user}
ExecStart={venv}/bin/ductile system backup --config {config_dir} --scope {scope} --to {backup_dir}/ --keep {keep}
UMask=0077
Nice=10
IOSchedulingClass=idle
# SIGTERM (a stop, a shutdown) removes the partial archive before the process exits.
TimeoutStopSec=60

# --- Privilege: none. The gateway user reads its own files; plugin roots are world-readable.
CapabilityBoundingSet=
NoNewPrivileges=yes
RestrictSUIDSGID=yes

# --- Filesystem: read-only except the archive directory and the state directory. SQLite
# writes the -shm index of a WAL database even to read it, so the snapshot needs the
# state directory writable; nothing else there is written.
ProtectSystem=strict
ReadWritePaths={writable}
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
# --- No network, no kernel knobs: a backup reads and writes files, nothing else.
PrivateNetwork=yes
RestrictAddressFamilies=AF_UNIX
""" + KERNEL_PROTECTIONS + """\
ProtectControlGroups=yes
RestrictNamespaces=yes
RestrictRealtime=yes
LockPersonality=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
"""

TIMER = """\
# {timer}: when {unit} runs (systemd.timer(5)).
# Rendered by `ductile deploy render backup-timer`. Install as /etc/systemd/system/{timer},
# then: systemctl enable --now {timer}
# Persistent=: a run missed while the host was off happens at the next boot.

[Unit]
Description=Daily ductile backup of {user}
Documentation=man:ductile-system(1)

[Timer]
OnCalendar=daily
RandomizedDelaySec=1h
Persistent=true

[Install]
WantedBy=timers.target
"""


def _values(layout: Layout) -> dict[str, object]:
    writable = " ".join(sorted({layout.backup_dir, layout.state_dir}))
    return {"unit": layout.backup_unit_name, "timer": layout.backup_timer_name, "user": layout.gateway_user,
            "venv": layout.venv, "config_dir": layout.config_dir, "backup_dir": layout.backup_dir,
            "scope": BACKUP_SCOPE, "keep": BACKUP_KEEP, "writable": writable}


def render_backup_service(layout: Layout) -> str:
    return SERVICE.format(**_values(layout))


def render_backup_timer(layout: Layout) -> str:
    return TIMER.format(**_values(layout))
