"""``ductile system backup``: gather facts → plan (shown before any writing) → snapshot the
database → write the archive → prune old archives. The steps are the modules' (``gather``,
``plan``, ``archive``); this module orders them and owns the two small pure rules of the
destination: what an archive in a directory is called, and which old ones ``--keep`` removes.
"""

from __future__ import annotations

import os
import pwd
import re
import socket
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ductile import __version__
from ductile.config import LoadedConfig
from ductile.system.archive import Interrupted, Progress, snapshot_db, terminate_unwinds, workdir_beside, write_archive
from ductile.system.gather import BackupError, gather, paths_of, secret_zero
from ductile.system.manifest import build_manifest, render_manifest, uid_text
from ductile.system.plan import BackupPlan, Paths, plan_backup

STAMP = "%Y%m%dT%H%M%SZ"


# -- pure rules ---------------------------------------------------------------------------

def archive_name(service: str, scope: str, now: datetime, code: str | None, n: int = 1) -> str:
    """``<service>-<scope>-<UTC time>-<pairing code>[-n].tar.gz``: sorts by time, and says
    at a glance which key opens it."""
    suffix = "" if n == 1 else f"-{n}"
    return f"{service}-{scope}-{now.strftime(STAMP)}-{code or 'NOKEY'}{suffix}.tar.gz"


def _pattern(service: str, scope: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(service)}-{re.escape(scope)}-(\d{{8}}T\d{{6}}Z)-[A-Z0-9]{{5}}(-\d+)?\.tar\.gz$")


def to_prune(names: Sequence[str], keep: int, service: str, scope: str) -> list[str]:
    """The archives of this service and scope beyond the ``keep`` newest (by their time,
    then their -n suffix). Other files, other scopes, other services are never touched."""
    pattern = _pattern(service, scope)
    ours = []
    for name in names:
        m = pattern.match(name)
        if m:
            ours.append((m.group(1), int((m.group(2) or "-1")[1:]), name))
    ours.sort(reverse=True)
    return [name for _, _, name in ours[max(keep, 0):]]


def gateway_owner(paths: Paths) -> tuple[int, int] | None:
    """(uid, gid) of the gateway user: whoever owns the state database (or, before it
    exists, the config directory), since the secret surface belongs to it."""
    for path in (paths.state_path, paths.config_dir):
        try:
            st = os.stat(path)
            return st.st_uid, st.st_gid
        except OSError:
            continue
    return None


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"#{uid}"


# -- the run ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Destination:
    path: str
    directory: str | None   # set when --to named a directory (archives are named and pruned there)


def destination(to: str, service: str, scope: str, code: str | None, now: datetime) -> Destination:
    """Resolve ``--to``: an existing directory or a path ending in / gets a named archive
    inside; anything else is the archive's own path, which must not exist."""
    path = os.path.abspath(os.path.expanduser(to))
    if to.endswith("/") or os.path.isdir(path):
        n = 1
        while os.path.lexists(os.path.join(path, archive_name(service, scope, now, code, n))):
            n += 1
        return Destination(os.path.join(path, archive_name(service, scope, now, code, n)), path)
    if os.path.lexists(path):
        raise BackupError("a file already exists here; backup never writes over one", where=path,
                          fix="choose a new file name, or pass a directory to --to")
    return Destination(path, None)


def make_directory(path: str) -> None:
    """Create ``path`` and missing parents 0700 (existing ones are left as they are)."""
    from ductile.errors import VaultError
    from ductile.vault.keyfile import make_dirs_private

    fix = "create it (install -d -m 0700) or choose another --to"
    try:
        make_dirs_private(path)
    except VaultError as err:
        raise BackupError(err.message, where=err.where, fix=fix) from None
    except OSError as err:
        raise BackupError(f"cannot create the directory: {err.strerror}", where=str(err.filename or path),
                          fix=fix) from None


def prepare(loaded: LoadedConfig, scope: str) -> tuple[Paths, BackupPlan]:
    """Walk the sources and decide. Problems refuse here, before anything is written."""
    paths = paths_of(loaded)
    zero = secret_zero(paths.age_key_file)
    plan = plan_backup(scope, paths, gather(scope, paths), zero, euid=os.geteuid())
    if not plan.ok:
        first = plan.problems[0]
        more = f" (and {len(plan.problems) - 1} more problem(s))" if len(plan.problems) > 1 else ""
        raise BackupError(first.message + more, where=first.path, fix=first.fix)
    return paths, plan


@dataclass(frozen=True)
class BackupResult:
    archive: str
    manifest: dict[str, Any]
    plan: BackupPlan
    pruned: tuple[str, ...]


def run_backup(loaded: LoadedConfig, scope: str, to: str, *, keep: int | None = None,
               on_plan: Callable[[BackupPlan, str], None] | None = None,
               progress: Progress | None = None) -> BackupResult:
    """Make one archive of ``scope`` at ``to``. ``on_plan`` sees the plan and the archive
    path before any writing starts."""
    target = os.path.abspath(os.path.expanduser(to))
    if not to.endswith("/") and os.path.lexists(target) and not os.path.isdir(target):
        raise BackupError("a file already exists here; backup never writes over one", where=target,
                          fix="choose a new file name, or pass a directory to --to")
    with terminate_unwinds():
        try:
            return _run(loaded, scope, target, to, keep, on_plan, progress)
        except Interrupted:
            raise BackupError("stopped by SIGTERM", where=target,
                              fix="nothing to clean up: no archive was left behind; run the backup again") from None


def _run(loaded: LoadedConfig, scope: str, target: str, to: str, keep: int | None,
         on_plan: Callable[[BackupPlan, str], None] | None, progress: Progress | None) -> BackupResult:
    paths, plan = prepare(loaded, scope)
    now = datetime.now(timezone.utc)
    dest = destination(to, loaded.config.service.name, scope, plan.pairing_code, now)
    if keep is not None and dest.directory is None:
        raise BackupError("--keep needs --to to be a directory", where="--keep",
                          fix="pass a directory to --to, e.g. /var/backups/ductile")
    if on_plan is not None:
        on_plan(plan, dest.path)
    make_directory(os.path.dirname(dest.path))
    with workdir_beside(dest.path) as work:
        snap = snapshot_db(paths.state_path, work)
        plan = plan.with_db(snap.sha256, snap.size)
        doc = build_manifest(plan, paths, version=__version__, hostname=socket.gethostname(),
                             created_at=now.strftime("%Y-%m-%dT%H:%M:%SZ"), uid=os.geteuid(),
                             user=user_name(os.geteuid()))
        write_archive(dest.path, plan, render_manifest(doc), uid_text(plan.pairing_code), snap, progress)
    pruned: tuple[str, ...] = ()
    if keep is not None and dest.directory is not None:
        pruned = prune(dest.directory, keep, loaded.config.service.name, scope)
    return BackupResult(dest.path, doc, plan, pruned)


def prune(directory: str, keep: int, service: str, scope: str) -> tuple[str, ...]:
    """Remove this service's archives of ``scope`` beyond the ``keep`` newest; only regular
    files owned by this uid are removed."""
    removed = []
    for name in to_prune(sorted(os.listdir(directory)), keep, service, scope):
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
                os.unlink(path)
                removed.append(path)
        except OSError:
            continue
    return tuple(removed)
