"""``--as-unit``: re-run a command the way the gateway's systemd unit runs.

``runuser -u ductile -- ductile account verify`` runs as the gateway user but without the
two capabilities the unit grants, so it cannot drop to an account and proves nothing.
``ductile account verify --as-unit`` (from a root shell) finds the unit that starts this
config, and re-executes the same command through ``setpriv`` with that unit's User=,
Group=, supplementary groups, ambient and bounding capabilities, NoNewPrivileges=, UMask=,
WorkingDirectory= and a systemd-like environment, using the unit's own ExecStart program
(the venv every account can reach). The re-executed command is then exactly the gateway
the unit would start, minus the sandbox (mount namespaces need systemd itself).

``setpriv_argv`` is pure and table-tested; ``reexec_as_unit`` is the edge that execs.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

from ductile.deploy.installed import UNIT_PATH_ENV, Identity, resolve_identity, unit_dirs, units_running
from ductile.deploy.unitfile import ALL_CAPS, SYSTEMD_PATH, UnitFacts
from ductile.errors import DuctileError
from ductile.hints import AS_UNIT_FLAG
from ductile.runtime.posture import AS_UNIT_ENV

# Passed through from the operator's shell: they shape the output, never the gateway's behaviour.
DISPLAY_ENV = ("TERM", "NO_COLOR", "COLUMNS", "LINES", "DUCTILE_DEBUG", UNIT_PATH_ENV)


def _cap_list(caps: frozenset[str]) -> str:
    return ",".join(["-all"] + [f"+{c[4:].lower()}" for c in ALL_CAPS if c in caps])


def setpriv_argv(facts: UnitFacts, ident: Identity, groups: Sequence[int] | None, command: Sequence[str],
                 setpriv: str = "setpriv") -> list[str]:
    """The ``setpriv`` line that starts ``command`` with the unit's credentials.

    ``groups``: the supplementary groups the unit gives (initgroups() of User=, plus
    SupplementaryGroups=; None when the user has no passwd entry, so none at all). Capabilities: the unit's ambient set (within its bounding set)
    goes into the inheritable and ambient sets, which is how systemd hands capabilities to
    a non-root User=; the bounding set is narrowed when the unit narrows it.
    """
    assert ident.uid is not None and ident.gid is not None
    argv = [setpriv]
    if not facts.runs_as_root:
        argv += [f"--reuid={ident.uid}", f"--regid={ident.gid}"]
        argv += [f"--groups={','.join(str(g) for g in groups)}"] if groups else ["--clear-groups"]
        held = facts.capabilities
        argv += [f"--inh-caps={_cap_list(held)}", f"--ambient-caps={_cap_list(held)}"]
    if facts.bounding != frozenset(ALL_CAPS):
        argv.append(f"--bounding-set={_cap_list(facts.bounding)}")
    if facts.no_new_privs:
        argv.append("--no-new-privs")
    return argv + ["--", *command]


def unit_env(facts: UnitFacts, home: str, user: str, current: Mapping[str, str]) -> dict[str, str]:
    """What systemd would put in the environment of the unit's ExecStart (plus display hints)."""
    env = {"PATH": SYSTEMD_PATH, "LANG": current.get("LANG", "C.UTF-8"), "HOME": home, "USER": user,
           "LOGNAME": user, "SHELL": "/usr/sbin/nologin"}
    env.update(dict(facts.environment))
    env.update({k: current[k] for k in DISPLAY_ENV if k in current})
    env[AS_UNIT_ENV] = facts.name
    return env


def strip_flag(args: Sequence[str]) -> list[str]:
    return [a for a in args if a != AS_UNIT_FLAG]


def absolute_args(args: Sequence[str], cwd: str) -> list[str]:
    """The re-run starts in the unit's WorkingDirectory=, so paths given relative to this
    shell (``--config etc``, ``--payload @job.json``) are made absolute first. Inline JSON
    and ``-`` (stdin) are left alone."""
    def fix(option: str, value: str) -> str:
        if option == "--payload":
            return "@" + os.path.join(cwd, value[1:]) if value.startswith("@") and len(value) > 1 else value
        return os.path.join(cwd, value)

    out: list[str] = []
    option = ""
    for a in args:
        if option:
            out.append(fix(option, a))
            option = ""
        elif a in ("--config", "-c", "--payload"):
            out.append(a)
            option = "--config" if a == "-c" else a
        elif a.startswith(("--config=", "--payload=")):
            key, _, value = a.partition("=")
            out.append(f"{key}={fix(key, value)}")
        else:
            out.append(a)
    return out


def find_unit(config_dir: str, config_file: str, env: Mapping[str, str]) -> UnitFacts:
    units = units_running(config_dir, config_file, env)
    if not units:
        raise DuctileError(
            f"no installed systemd unit starts `ductile serve --config {config_dir}` "
            f"(searched {', '.join(unit_dirs(env))})", where=AS_UNIT_FLAG,
            fix=f"install it first: ductile deploy render unit --config {config_dir} > /etc/systemd/system/ductile.service")
    if len(units) > 1:
        raise DuctileError(f"{len(units)} units start this config ({', '.join(u.name for u in units)}); "
                           "--as-unit cannot tell which one to copy", where=AS_UNIT_FLAG,
                           fix="keep one unit per config: two gateways must never share a state database")
    return units[0]


def reexec_as_unit(config_dir: str, config_file: str, args: Sequence[str] | None = None,
                   env: Mapping[str, str] | None = None) -> NoReturn:
    """Replace this process with the same command run as the unit runs it (root only)."""
    env = os.environ if env is None else env
    args = list(sys.argv[1:] if args is None else args)
    if os.geteuid() != 0:
        raise DuctileError(f"{AS_UNIT_FLAG} starts the command as the unit's user with the unit's capabilities, "
                           f"which only root can do (this is uid {os.geteuid()})", where=AS_UNIT_FLAG,
                           fix="run it from a root shell")
    facts = find_unit(config_dir, config_file, env)
    ident = resolve_identity(facts)
    if ident.uid is None or ident.gid is None:
        raise DuctileError(f"{facts.name}: {ident.problem}", where=facts.path,
                           fix="create the gateway user: deploy/install.sh, or systemd-sysusers")
    if not facts.program:
        raise DuctileError(f"{facts.name}: ExecStart= does not run `… serve`, so the program to re-run is unknown",
                           where=facts.path, fix="render the unit with ductile deploy render unit")
    if not os.access(facts.program[0], os.X_OK):
        raise DuctileError(f"{facts.name}: its program {facts.program[0]} is not executable here", where=facts.path,
                           fix="run deploy/install.sh (it installs the venv the unit starts)")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise DuctileError("setpriv is not installed", where=AS_UNIT_FLAG, fix="install util-linux (apt-get install util-linux)")
    groups: list[int] | None
    try:
        pw = pwd.getpwuid(ident.uid)
        home, user, groups = pw.pw_dir, pw.pw_name, list(os.getgrouplist(pw.pw_name, ident.gid))  # initgroups()
    except KeyError:
        home, user, groups = "/", str(ident.uid), None
    if facts.supplementary_groups:
        import grp

        groups = list(groups or [ident.gid])
        for g in facts.supplementary_groups:
            try:
                groups.append(int(g) if g.isdigit() else grp.getgrnam(g).gr_gid)
            except KeyError:
                raise DuctileError(f"{facts.name}: SupplementaryGroups={g} does not exist", where=facts.path,
                                   fix="create the group or remove it from the unit") from None
    argv = setpriv_argv(facts, ident, groups, [*facts.program, *absolute_args(strip_flag(args), os.getcwd())],
                        setpriv=setpriv)
    try:
        os.chdir(facts.working_directory)
    except OSError as err:
        raise DuctileError(f"{facts.name}: WorkingDirectory={facts.working_directory}: {err.strerror}",
                           where=facts.path, fix="run deploy/install.sh (systemd-tmpfiles creates it)") from None
    os.umask(facts.umask)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(setpriv, argv, unit_env(facts, home, user, env))
