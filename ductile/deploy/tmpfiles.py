"""tmpfiles.d(5) text: every directory ductile needs, with its mode and owner. Pure.

A gateway holding only CAP_SETUID+CAP_SETGID can neither create nor chown another uid's
directory, so this file is what provisions the account directories; the gateway only
verifies them at boot. Account owners are written as numbers, exactly as in the config.
"""

from __future__ import annotations

import textwrap

from ductile.deploy.layout import Layout

HEADER = """\
# {conf}: directories, modes and owners (tmpfiles.d(5)).
# Rendered by `ductile deploy render tmpfiles` from the config's paths and `accounts:` map;
# re-render after changing either. A `d` line creates a missing directory and corrects the
# mode and owner of an existing one; nothing is ever cleaned up (age `-`).
# Install as /etc/tmpfiles.d/{conf}, then run (after systemd-sysusers, which
# creates the gateway user): systemd-tmpfiles --create {conf}"""


def render_tmpfiles(layout: Layout) -> str:
    dirs = layout.directories
    wp = max(len(d.path) for d in dirs)
    wu = max(len(d.user) for d in dirs)
    wg = max(len(d.group) for d in dirs)
    lines = [HEADER.format(conf=layout.conf_name)]
    last_why = ""
    for d in dirs:
        if d.why != last_why:
            lines += [""] + ["# " + ln for ln in textwrap.wrap(d.why, width=88, break_on_hyphens=False, break_long_words=False)]
            last_why = d.why
        lines.append(f"d {d.path.ljust(wp)} {d.mode:04o} {d.user.ljust(wu)} {d.group.ljust(wg)} -")
    return "\n".join(lines) + "\n"
