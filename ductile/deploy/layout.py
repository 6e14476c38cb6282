"""The host layout a config implies: users, directories with mode and owner, unit paths. Pure.

``plan_layout`` turns the loaded config (paths + the ``accounts:`` map) into a ``Layout``
that the three renderers print. Every rule that would leave a broken host — an account
directory its account cannot reach, a secret inside an account's directory, a 0700 line
on a shared system directory — is refused here, once, before any text exists, so the
sysusers, tmpfiles and unit files can never disagree about what they were given.
"""

from __future__ import annotations

import math
import posixpath
import re
from dataclasses import dataclass

from ductile.config.model import Config
from ductile.errors import ConfigError, UsageError

DEFAULT_GATEWAY_USER = "ductile"
DEFAULT_VENV = "/opt/ductile/venv"
ACCOUNT_USER_PREFIX = "ductile-"
NOLOGIN = "/usr/sbin/nologin"

# useradd/sysusers accept longer names, but 31 is what utmp, ps and ls show whole.
USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,30}$")
# Characters that need no quoting or escaping in tmpfiles.d, sysusers.d and unit files;
# whitespace, quotes, backslash and % (a specifier in all three) would change the meaning.
SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/+@,:=-]*$")

# Directories shared with the rest of the system: a tmpfiles line on one of them would
# chmod/chown it for every other program on the host.
SHARED_DIRS = frozenset({
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/media", "/mnt", "/opt",
    "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/usr/bin", "/usr/lib",
    "/usr/local", "/usr/local/bin", "/usr/local/lib", "/usr/sbin", "/usr/share", "/var",
    "/var/backups", "/var/cache", "/var/lib", "/var/log", "/var/spool", "/var/tmp",
})
# What the confined unit hides from the gateway and its plugins (ProtectHome=yes,
# PrivateTmp=yes, PrivateDevices=yes, the /proc and /sys views).
HIDDEN_BY_UNIT = ("/home", "/root", "/run/user", "/tmp", "/var/tmp", "/dev", "/proc", "/sys")

BACKUP_PARENT = "/var/backups"
BACKUP_KEEP = 14      # archives the backup timer keeps (per scope)
BACKUP_SCOPE = "plugins"
ACCOUNT_DIR_MODE = 0o700
TRAVERSE_MODE = 0o711   # o+x without o+r: accounts reach their own directory, list nothing
PRIVATE_MODE = 0o700
PLUGIN_ROOT_MODE = 0o755
# SIGTERM drains for service.shutdown_timeout, then kills stragglers with kill_grace; the
# margin covers re-queueing them, closing the database and the kill helper's round trip.
STOP_MARGIN = 25


@dataclass(frozen=True)
class Account:
    """One ``accounts:`` entry as the OS sees it."""

    name: str        # the config key: default, untrusted, ...
    user: str        # ductile-<name>
    group: str       # name of the group owning ``gid`` (the first account that uses it)
    uid: int
    gid: int
    state_dir: str


@dataclass(frozen=True)
class Directory:
    """One tmpfiles ``d`` line: created if missing, mode and owner corrected if not."""

    path: str
    mode: int
    user: str        # a user name, or a numeric uid for accounts (exactly as in the config)
    group: str
    field: str       # the config field it comes from, for refusals
    why: str         # the comment written above the line


@dataclass(frozen=True)
class Layout:
    gateway_user: str
    config_dir: str
    state_dir: str                     # directory of state.path: the gateway's home and cwd
    confined: bool                     # the unit holds CAP_SETUID+CAP_SETGID and is sandboxed
    accounts: tuple[Account, ...]      # sorted by name
    directories: tuple[Directory, ...]  # tmpfiles order
    writable: tuple[str, ...]          # ReadWritePaths= of the confined unit
    venv: str
    stop_timeout: int                  # TimeoutStopSec= in seconds
    drain: str                         # how stop_timeout was reached, for the unit's comment
    backup_dir: str = ""               # where the backup timer writes archives (/var/backups/<user>)

    @property
    def unit_name(self) -> str:
        return f"{self.gateway_user}.service"

    @property
    def backup_unit_name(self) -> str:
        return f"{self.gateway_user}-backup.service"

    @property
    def backup_timer_name(self) -> str:
        return f"{self.gateway_user}-backup.timer"

    @property
    def conf_name(self) -> str:
        """File name under /etc/sysusers.d and /etc/tmpfiles.d."""
        return f"{self.gateway_user}.conf"


def is_inside(child: str, parent: str) -> bool:
    """``child`` is ``parent`` or below it."""
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def _strictly_inside(child: str, parent: str) -> bool:
    return child != parent and is_inside(child, parent)


def _between(top: str, path: str) -> list[str]:
    """Directories strictly between ``top`` and ``path``, outermost first."""
    out = []
    d = posixpath.dirname(path)
    while d != top and is_inside(d, top):
        out.append(d)
        d = posixpath.dirname(d)
    return list(reversed(out))


def _refuse(field: str, message: str, fix: str) -> ConfigError:
    return ConfigError(message, where=field, fix=fix)


def _check_path(field: str, path: str) -> str:
    if not path.startswith("/"):
        raise _refuse(field, f"{path} is not absolute; systemd files need absolute paths", "write an absolute path")
    if not SAFE_PATH.match(path):
        raise _refuse(field, f"{path} contains a character (whitespace, quote, backslash, % or similar) "
                             "that systemd files would read differently",
                      "use letters, digits and . _ - / only")
    return posixpath.normpath(path)


def _accounts(config: Config, gateway_user: str) -> tuple[Account, ...]:
    out: list[Account] = []
    group_of_gid: dict[int, str] = {}
    for name in sorted(config.accounts):
        acct = config.accounts[name]
        field = f"accounts.{name}"
        user = ACCOUNT_USER_PREFIX + name
        if not USER_NAME.match(user):
            raise _refuse(field, f"the OS user for this account would be {user}, longer than 31 characters",
                          f"use an account name of at most {31 - len(ACCOUNT_USER_PREFIX)} characters")
        if user == gateway_user:
            raise _refuse(field, f"the OS user for this account, {user}, is the gateway user itself",
                          "rename the account or pass another --gateway-user")
        sd = _check_path(f"{field}.state_dir", acct.state_dir)
        group = group_of_gid.setdefault(acct.gid, user)
        out.append(Account(name, user, group, acct.uid, acct.gid, sd))
    return tuple(out)


def plan_layout(config: Config, *, config_dir: str, gateway_user: str = DEFAULT_GATEWAY_USER,
                venv: str = DEFAULT_VENV) -> Layout:
    """The layout ``config`` implies when its config directory is ``config_dir`` on the host.

    Raises ``ConfigError`` (``where`` = the config field) or ``UsageError`` for the
    gateway user, naming the rule and the fix, when the layout would not work.
    """
    if not USER_NAME.match(gateway_user):
        raise UsageError(f"{gateway_user!r} is not a valid system user name",
                         where="--gateway-user", fix="use lowercase letters, digits, - and _, at most 31 characters")
    config_dir = _check_path("--config-dir", config_dir)
    state_path = _check_path("state.path", config.state.path)
    vault_file = _check_path("secrets.vault_file", config.secrets.vault_file)
    age_key = _check_path("secrets.age_key_file", config.secrets.age_key_file)
    roots = [_check_path(f"plugin_roots[{i}]", r) for i, r in enumerate(config.plugin_roots)]
    venv = _check_path("venv", venv)
    accounts = _accounts(config, gateway_user)
    confined = bool(accounts) and not config.service.unconfined

    state_dir = posixpath.dirname(state_path)
    vault_dir = posixpath.dirname(vault_file)
    secret_dir = posixpath.dirname(age_key)
    gw = gateway_user

    # 1. every account directory lies below the state directory, which the file creates
    #    0711 together with every directory in between
    for a in accounts:
        if not _strictly_inside(a.state_dir, state_dir):
            raise _refuse(f"accounts.{a.name}.state_dir",
                          f"{a.state_dir} is not below the state directory {state_dir} (from state.path), so no "
                          "directory this layout creates guarantees its parents are traversable (0711)",
                          f"use {state_dir}/accounts/{a.name}")
    # 2. nothing secret inside a directory an account owns
    secrets = [("--config-dir", config_dir), ("secrets.age_key_file", age_key),
               ("state.path", state_path), ("secrets.vault_file", vault_file)]
    for a in accounts:
        for field, path in secrets:
            if is_inside(path, a.state_dir):
                raise _refuse(field, f"{path} and accounts.{a.name}.state_dir {a.state_dir} overlap: "
                                     "that account could read or replace the gateway's secrets",
                              f"keep {field} outside every account directory")
    # 3. plugin code is root-owned and outside anything the gateway or an account can write
    owned = [("--config-dir", config_dir), ("state.path", state_dir), ("secrets.vault_file", vault_dir),
             ("secrets.age_key_file", secret_dir)] + [(f"accounts.{a.name}.state_dir", a.state_dir) for a in accounts]
    for i, root in enumerate(roots):
        for field, d in owned:
            if is_inside(root, d) or is_inside(d, root):
                raise _refuse(f"plugin_roots[{i}]", f"{root} overlaps {d} (from {field}), which is not root-owned "
                                                    "0755: whoever writes there could swap plugin code, or accounts "
                                                    "could not read it",
                              "keep plugin roots in a root-owned directory of their own such as /opt/ductile/plugins")

    dirs: list[Directory] = [
        Directory(config_dir, PRIVATE_MODE, gw, gw, "--config-dir",
                  "Config directory: secret surface, the gateway's alone (verified 0700 at boot)."),
    ]
    if secret_dir not in (config_dir, state_dir, vault_dir):
        dirs.append(Directory(secret_dir, PRIVATE_MODE, gw, gw, "secrets.age_key_file",
                              "Directory of the age key (secret zero): never archived, closed to accounts."))
    parent_mode = TRAVERSE_MODE if accounts else PRIVATE_MODE
    dirs.append(Directory(state_dir, parent_mode, gw, gw, "state.path",
                          "State directory (database, vault): 0711 lets accounts pass through to their own "
                          "directory without listing this one." if accounts else
                          "State directory (database, vault): no accounts need to pass through it."))
    if vault_dir not in (config_dir, state_dir):
        mode = TRAVERSE_MODE if any(is_inside(a.state_dir, vault_dir) for a in accounts) else PRIVATE_MODE
        dirs.append(Directory(vault_dir, mode, gw, gw, "secrets.vault_file", "Directory of the vault."))
    for a in accounts:
        for d in _between(state_dir, a.state_dir):
            dirs.append(Directory(d, TRAVERSE_MODE, gw, gw, f"accounts.{a.name}.state_dir",
                                  "Parent of account directories: traversable (0711), not listable, not writable "
                                  "by accounts."))
    for a in accounts:
        dirs.append(Directory(a.state_dir, ACCOUNT_DIR_MODE, str(a.uid), str(a.gid), f"accounts.{a.name}.state_dir",
                              f"accounts.{a.name}: {a.user} (uid {a.uid}, gid {a.gid}), private to the account."))
    backup_dir = f"{BACKUP_PARENT}/{gw}"
    dirs.append(Directory(backup_dir, PRIVATE_MODE, gw, gw, "--gateway-user",
                          f"Archives of `ductile system backup` ({gw}-backup.timer): the gateway's alone. They hold "
                          "the vault and the database, never the age key."))
    for i, root in enumerate(roots):
        dirs.append(Directory(root, PLUGIN_ROOT_MODE, "root", "root", f"plugin_roots[{i}]",
                              "Plugin code: root-owned so neither the gateway nor an account can change it, "
                              "world-readable so whoever runs a plugin can read it."))
    directories = _merge(dirs)
    _check_reachable(directories, accounts, roots)
    if confined:
        _check_visible(secrets + [(f"plugin_roots[{i}]", r) for i, r in enumerate(roots)] + [("venv", venv)])

    writable = [state_dir] + ([] if is_inside(vault_dir, state_dir) else [vault_dir])
    drain = config.service.shutdown_timeout + config.service.kill_grace
    return Layout(
        gateway_user=gw, config_dir=config_dir, state_dir=state_dir, confined=confined, accounts=accounts,
        directories=directories, writable=tuple(sorted(set(writable))), venv=venv,
        stop_timeout=math.ceil(drain) + STOP_MARGIN, backup_dir=backup_dir,
        drain=f"service.shutdown_timeout ({_secs(config.service.shutdown_timeout)}) + service.kill_grace "
              f"({_secs(config.service.kill_grace)}) + {STOP_MARGIN}s to re-queue and close the database",
    )


def _secs(value: float) -> str:
    return f"{value:g}s"


def _merge(dirs: list[Directory]) -> tuple[Directory, ...]:
    """One line per path; the same path asked for with two modes or owners is a refusal."""
    seen: dict[str, Directory] = {}
    out: list[Directory] = []
    for d in dirs:
        if d.path in SHARED_DIRS:
            raise _refuse(d.field, f"{d.path} is a system directory shared with other programs; the tmpfiles line "
                                   f"would set it to {d.mode:04o} {d.user}:{d.group}",
                          "use a directory of ductile's own below it, e.g. /var/lib/ductile or /etc/ductile")
        prior = seen.get(d.path)
        if prior is None:
            seen[d.path] = d
            out.append(d)
        elif (prior.mode, prior.user, prior.group) != (d.mode, d.user, d.group):
            raise _refuse(d.field, f"{d.path} would need {d.mode:04o} {d.user}:{d.group} here but "
                                   f"{prior.mode:04o} {prior.user}:{prior.group} for {prior.field}",
                          f"give {d.field} and {prior.field} separate directories")
    return tuple(out)


def _check_reachable(dirs: tuple[Directory, ...], accounts: tuple[Account, ...], roots: list[str]) -> None:
    """Accounts must be able to traverse every directory this file creates on the way to
    their own directory and to plugin code."""
    by_path = {d.path: d for d in dirs}
    targets = [(f"accounts.{a.name}.state_dir", a.state_dir) for a in accounts]
    targets += [(f"plugin_roots[{i}]", r) for i, r in enumerate(roots)]
    for field, target in targets:
        d = posixpath.dirname(target)
        while d != "/":
            above = by_path.get(d)
            if above is not None and not above.mode & 0o001:
                raise _refuse(field, f"{target} lies below {d}, which this layout makes {above.mode:04o} for "
                                     f"{above.field}, so accounts cannot reach it",
                              f"move {field} out of {d}")
            d = posixpath.dirname(d)


def _check_visible(paths: list[tuple[str, str]]) -> None:
    """The confined unit's sandbox hides these trees; a path there would vanish at start."""
    for field, path in paths:
        for hidden in HIDDEN_BY_UNIT:
            if is_inside(path, hidden):
                raise _refuse(field, f"{path} is under {hidden}, which the confined unit hides from the gateway "
                                     "and its plugins (ProtectHome=, PrivateTmp=, PrivateDevices=)",
                              "use a path under /etc, /var/lib or /opt")
