"""Find the installed systemd unit that runs a config, and read it with its drop-ins. Edge.

The search follows systemd's own precedence for system units: a unit file in
``/etc/systemd/system`` hides one of the same name in ``/run`` or ``/usr/lib``, and drop-ins
(``NAME.service.d/*.conf``) from every directory apply in file-name order. A unit "runs a
config" when its ``ExecStart=`` is ``… serve --config <that config dir or file>``.

``DUCTILE_UNIT_PATH`` (colon-separated directories) replaces the search path, for a staged
root or a test; it is ductile's own variable so that ``systemd-analyze`` and other tools
in the same environment keep their normal ``SYSTEMD_UNIT_PATH``.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass

from ductile.deploy.unitfile import UnitFacts, parse_unit, runs_config

UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system",
             "/usr/lib/systemd/system", "/lib/systemd/system")
UNIT_PATH_ENV = "DUCTILE_UNIT_PATH"
MAX_UNIT_BYTES = 256 * 1024


def unit_dirs(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    text = (os.environ if env is None else env).get(UNIT_PATH_ENV)
    if text is None:
        return UNIT_DIRS
    return tuple(d for d in text.split(":") if d)


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_UNIT_BYTES)
    except OSError:
        return None
    return data.decode("utf-8", "replace")


def _listdir(d: str) -> list[str]:
    try:
        return sorted(os.listdir(d))
    except OSError:
        return []


def read_unit(name: str, dirs: tuple[str, ...]) -> UnitFacts | None:
    """The unit ``name`` as systemd would load it from ``dirs`` (None when absent)."""
    main: tuple[str, str] | None = None
    for d in dirs:
        text = _read(os.path.join(d, name))
        if text is not None:
            main = (os.path.join(d, name), text)
            break
    if main is None:
        return None
    dropins: dict[str, str] = {}
    for d in dirs:
        dd = os.path.join(d, f"{name}.d")
        for f in _listdir(dd):
            if f.endswith(".conf") and f not in dropins:
                dropins[f] = os.path.join(dd, f)
    files = [main] + [(p, t) for p, t in ((dropins[f], _read(dropins[f])) for f in sorted(dropins)) if t is not None]
    return parse_unit(name, files)


def units_running(config_dir: str, config_file: str, env: Mapping[str, str] | None = None) -> list[UnitFacts]:
    """Every installed ``*.service`` that starts ``ductile serve`` on this config."""
    dirs = unit_dirs(env)
    seen: set[str] = set()
    found = []
    for d in dirs:
        for name in _listdir(d):
            if not name.endswith(".service") or name in seen:
                continue
            seen.add(name)
            text = _read(os.path.join(d, name))
            if text is None or "serve" not in text:
                continue
            facts = read_unit(name, dirs)
            if facts is not None and runs_config(facts, config_dir, config_file):
                found.append(facts)
    return found


@dataclass(frozen=True)
class Identity:
    """A unit's User=/Group= as numbers on this host; ``problem`` says why they are not."""

    uid: int | None
    gid: int | None
    problem: str = ""


def resolve_identity(facts: UnitFacts) -> Identity:
    """User= and Group= (names or numbers) to uid and gid, as systemd would at start."""
    user = facts.user
    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        uid, gid = pw.pw_uid, pw.pw_gid
    except KeyError:
        if not user.isdigit():
            return Identity(None, None, f"User={user} does not exist on this host")
        uid, gid = int(user), int(user)
    except ValueError:
        return Identity(None, None, f"User={user} is not a user name or number")
    if facts.group:
        import grp

        try:
            gid = grp.getgrgid(int(facts.group)).gr_gid if facts.group.isdigit() else grp.getgrnam(facts.group).gr_gid
        except KeyError:
            if not facts.group.isdigit():
                return Identity(uid, None, f"Group={facts.group} does not exist on this host")
            gid = int(facts.group)
    return Identity(uid, gid)
