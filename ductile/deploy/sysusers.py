"""sysusers.d(5) text: the gateway user and one fixed-id user per account. Pure.

The gateway's uid is left to systemd-sysusers (any free system uid will do: nothing
refers to it by number); each account's uid and gid are written exactly as the config
says, because the gateway drops to those numbers, not to names.
"""

from __future__ import annotations

from ductile.deploy.layout import NOLOGIN, Layout

HEADER = """\
# {conf}: the users ductile needs (sysusers.d(5)).
# Rendered by `ductile deploy render sysusers` from the config's `accounts:` map, where each
# account's uid, gid and state_dir are written once; re-render after changing the map.
# Install as /etc/sysusers.d/{conf}, then run: systemd-sysusers {conf}
# systemd-sysusers exits 0 even when a fixed uid or gid is already taken (it picks another
# or skips the user): check `getent passwd ductile-<account>` afterwards. deploy/install.sh
# does, and refuses on a mismatch.
"""


def render_sysusers(layout: Layout) -> str:
    lines = [HEADER.format(conf=layout.conf_name),
             "# The gateway: a system user without login; systemd-sysusers picks a free uid.",
             f'u {layout.gateway_user} - "ductile gateway" {layout.state_dir} {NOLOGIN}']
    if layout.accounts:
        lines += ["", "# Accounts plugins drop to: the ids from the config, no login, home = state_dir."]
    groups_written: set[int] = set()
    for a in layout.accounts:
        if a.gid not in groups_written:
            groups_written.add(a.gid)
            lines.append(f"g {a.group} {a.gid}")
        lines.append(f'u {a.user} {a.uid}:{a.gid} "ductile account {a.name}" {a.state_dir} {NOLOGIN}')
    return "\n".join(lines) + "\n"
