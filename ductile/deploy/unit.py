"""systemd.service(5) text for the gateway. Pure.

A config with accounts (and no ``service.unconfined``) gets the confined unit: exactly
CAP_SETUID+CAP_SETGID and a sandbox that every plugin inherits. A config without
accounts gets the unconfined shape used for a second, admin instance: no capabilities
at all, since the boot gate refuses a gateway that holds them with no accounts to use
them on. The comments carry the reasons, so the installed file explains itself.
"""

from __future__ import annotations

import textwrap

from ductile.deploy.layout import Layout

# The kernel knobs no ductile process touches; shared by every unit ductile renders.
# shared with the backup unit, which adds ProtectControlGroups=yes (the gateway cannot: it
# needs its delegated cgroup subtree writable, see below)
KERNEL_PROTECTIONS = """\
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectClock=yes
ProtectHostname=yes
"""

COMMON_HEAD = """\
[Unit]
Description={description}
Documentation=man:ductile(1) man:ductile.yaml(5)
Wants=network-online.target
After=network-online.target
# A boot refusal (a wrong mode, a missing account directory, ...) repeats on every
# restart; give up after five tries in two minutes and leave the reason in the journal.
StartLimitIntervalSec=120
StartLimitBurst=5

[Service]
# The gateway sends READY=1 once it has booted, RELOADING=1 (with MONOTONIC_USEC) and
# READY=1 around a reload, and STOPPING=1 when it starts to drain.
Type=notify
NotifyAccess=main
User={user}
Group={user}
ExecStart={venv}/bin/ductile serve --config {config_dir}
# `systemctl reload` asks the running gateway over its control channel and waits for the
# answer: it fails (and the journal says why) when the new config is refused, and the
# gateway keeps running on the old one. SIGHUP does the same without the answer.
ExecReload={venv}/bin/ductile system reload --config {config_dir}
WorkingDirectory={state_dir}
Restart=on-failure
RestartSec=5s
{drain}
KillMode=mixed
TimeoutStopSec={stop_timeout}s
# Files the gateway and its plugins create are private to their owner.
UMask=0077
# A core dump of the gateway would hold decrypted secrets.
LimitCORE=0
# Every job gets a cgroup of its own under this unit's cgroup, killed with cgroup.kill
# when the job ends, however its processes forked or setsid'd (service.containment).
# Delegate=yes hands the subtree (and its controllers, for plugins.<name>.limits) to the
# gateway's user; without it the gateway falls back to sweeping each account's leftovers.
Delegate=yes
# Open files: the gateway raises its soft limit to this hard limit at boot and sizes
# api.max_connections under it, so idle sockets never starve the database of descriptors.
LimitNOFILE=65536
"""

CONFINED = """\
# {unit}: the confined ductile gateway (systemd.service(5), systemd.exec(5)).
# Rendered by `ductile deploy render unit` from the config; re-render after changing its
# paths, accounts or service.shutdown_timeout. Install as /etc/systemd/system/{unit}.
#
# Capabilities: CAP_SETUID and CAP_SETGID, nothing else; never root, never a setuid
# binary. systemd grants them as *ambient* capabilities, which every child would inherit
# (and a plugin holding CAP_SETUID could setuid(0)), so the gateway clears its ambient and
# inheritable sets and sets no_new_privs before it spawns anything: plugins start with no
# capabilities at all. No CAP_KILL either: a job ends with cgroup.kill on its own cgroup
# (Delegate=yes), a timed-out plugin is signalled by a helper dropped to the plugin's own
# account, and systemd sweeps the unit's cgroup on stop.
#
# Everything below also confines the plugins: they are children of this unit.
""" + COMMON_HEAD + """\

# --- Privilege: the two capabilities the uid drop needs, in both sets.
AmbientCapabilities=CAP_SETUID CAP_SETGID
CapabilityBoundingSet=CAP_SETUID CAP_SETGID
# Compatible with the drop (setuid to a lower privilege needs no new privileges); makes
# setuid binaries and file capabilities inert for the gateway and every plugin.
NoNewPrivileges=yes
# Nothing here may create setuid/setgid files.
RestrictSUIDSGID=yes

# --- Filesystem: read-only except the state directory (the database, the vault and the
# account directories below it). The config directory stays read-only: serve never writes
# it (`ductile plugin lock` runs outside this unit).
ProtectSystem=strict
ReadWritePaths={writable}
# Plugins get no view of people's homes; automation that needs one belongs in an
# unconfined admin instance (see ductile-admin.service).
ProtectHome=yes
# /tmp is private to this unit (still shared by its plugins: sticky, 1777).
PrivateTmp=yes
PrivateDevices=yes
""" + KERNEL_PROTECTIONS + """\
PrivateMounts=yes
# Deliberately NOT set, each because it breaks the design:
# - StateDirectory=: systemd would chown the state directory to the gateway user, and in
#   some versions recursively, taking the account directories with it; tmpfiles owns it.
# - DynamicUser=: the gateway's uid must own its state across restarts and appear in
#   the tmpfiles file.
# - PrivateUsers=: a user namespace maps only the gateway's uid; setuid() to an account
#   uid fails there, so no plugin could be dropped.
# - ProtectProc=invisible / ProcSubset=pid: the gateway could no longer see its plugins
#   (other uids) in /proc, and psutil needs /proc/stat.
# - MemoryDenyWriteExecute=: would kill JIT runtimes (node, java, luajit) inside plugins.
# - PrivateNetwork=: the API listens and plugins talk to the network.
# - SystemCallFilter=~@privileged: that group holds setgroups, setresuid and capset, the
#   drop itself.
# - ProtectControlGroups=: it mounts /sys/fs/cgroup read-only, the delegated subtree too,
#   so jobs could not get cgroups of their own. Only the subtree Delegate=yes chowned to
#   the gateway is writable; the rest of the hierarchy stays root's.

# --- Kernel surface.
LockPersonality=yes
RestrictRealtime=yes
# No namespaces: a plugin cannot `unshare -r` into a user namespace where it looks like root.
RestrictNamespaces=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
# @system-service keeps what the drop needs (setgroups, setresuid/setresgid, capset,
# prctl, execve); a plugin calling anything else gets EPERM instead of being killed.
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
RemoveIPC=yes

[Install]
WantedBy=multi-user.target
"""

UNCONFINED = """\
# {unit}: an UNCONFINED ductile gateway (systemd.service(5), systemd.exec(5)).
# Rendered by `ductile deploy render unit` from a config with no accounts (or with
# service.unconfined: true). Install as /etc/systemd/system/{unit}.
#
# Its plugins run as {user} itself, not behind per-plugin accounts. This is the second
# instance of the two-instance pattern: keep every plugin that can be walled in the
# confined ductile.service, and give only what cannot be walled (driving docker, reading
# an operator's home, ...) to an instance like this one, with its own user, config
# ({config_dir}), state ({state_dir}), secrets and API port.
#
# It holds no capabilities: the boot gate refuses a gateway that can drop privileges but
# has no accounts to drop to. There is deliberately no filesystem sandbox (ProtectSystem=,
# ProtectHome=, PrivateTmp= are off): reaching the host is what this instance is for.
# Grant access with group memberships, and remember that the docker group is root.
""" + COMMON_HEAD + """\

# --- Privilege: none, and nothing it runs can gain any (no sudo, no setuid helpers).
CapabilityBoundingSet=
NoNewPrivileges=yes
RestrictSUIDSGID=yes

[Install]
WantedBy=multi-user.target
"""


def render_unit(layout: Layout) -> str:
    template = CONFINED if layout.confined else UNCONFINED
    description = ("ductile automation gateway (plugins drop to their accounts)" if layout.confined
                   else f"ductile automation gateway, unconfined (plugins run as {layout.gateway_user})")
    return template.format(
        unit=layout.unit_name, description=description, user=layout.gateway_user, venv=layout.venv,
        config_dir=layout.config_dir, state_dir=layout.state_dir, stop_timeout=layout.stop_timeout,
        drain=_comment(
            "SIGTERM reaches the gateway alone: it stops taking jobs, waits for running ones and re-queues "
            "the rest. After TimeoutStopSec systemd, as root, SIGKILLs whatever is left in the cgroup, whatever "
            f"its uid. TimeoutStopSec = {layout.drain}."),
        writable=" ".join(layout.writable),
    )


def _comment(text: str) -> str:
    return "\n".join("# " + line for line in textwrap.wrap(text, width=88, break_on_hyphens=False, break_long_words=False))
