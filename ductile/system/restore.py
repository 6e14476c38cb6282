"""``ductile system restore``: verify the whole archive → plan every write (pure, shown by
``--dry-run``) → stage and commit (``extract``) → check the result.

Where each member goes: the path it came from (the manifest's ``source``), or that path
below ``--to DIR``. Who owns it and with which mode follows the layout, never the archive:

    role                   owner                         mode
    db, config, lock,      the gateway user              files 0600; directories created 0700
      vault                                              (0711 where an account directory lies below)
    plugin                 root (the running user when   files and directories as archived, but never
                           not root: said so)            group/world-writable, setuid or setgid
    account                the account's uid:gid         files as archived & 0700, directories 0700
                           (root only)

A destination that exists with other contents is a conflict: refused, unless ``--force``,
which first keeps it as ``<path>.bak`` (``.bak.N`` if that is taken). Replacing a state
database also moves its ``-wal``/``-shm`` aside, since SQLite would otherwise replay the
old database's log over the restored one.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass

from ductile.system.manifest import Limits, Manifest, ManifestMember

PRIVATE_DIR = 0o700
TRAVERSE_DIR = 0o711
PLUGIN_MASK = 0o755
ACCOUNT_MASK = 0o700


@dataclass(frozen=True)
class DestFact:
    """What is at a destination now."""

    exists: bool
    kind: str = ""            # file | dir | symlink | other
    sha256: str | None = None  # files whose size matches the member's
    wal: bool = False         # a state database with a non-empty -wal beside it


@dataclass(frozen=True)
class Step:
    member: ManifestMember
    dest: str
    action: str               # create | replace | same | mkdir | exists
    uid: int
    gid: int
    mode: int
    parent_mode: int          # for directories created on the way to ``dest``
    parent_uid: int
    parent_gid: int


@dataclass(frozen=True)
class RestorePlan:
    steps: tuple[Step, ...]
    refusals: tuple[str, ...]
    notes: tuple[str, ...]
    gateway: tuple[int, int]
    to_dir: str | None

    @property
    def ok(self) -> bool:
        return not self.refusals

    @property
    def writes(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.action in ("create", "replace", "mkdir"))

    @property
    def db_dest(self) -> str | None:
        """The state database this restore replaces or creates, if any."""
        return next((s.dest for s in self.writes if s.member.role == "db"), None)


def destination(source: str, to_dir: str | None) -> str:
    return posixpath.normpath(to_dir.rstrip("/") + source) if to_dir else source


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def plan_restore(manifest: Manifest, facts: Mapping[str, DestFact], *, to_dir: str | None, gateway: tuple[int, int],
                 euid: int, egid: int, force: bool) -> RestorePlan:
    """Every write, with owner and mode from the layout, or the refusals that stop it."""
    steps: list[Step] = []
    refusals: list[str] = []
    notes: list[str] = []
    accounts = {r.archive_path: r for r in manifest.roots if r.role == "account"}
    account_dests = [destination(r.source_path, to_dir) for r in accounts.values()]
    plugin_owner = (0, 0) if euid == 0 else (euid, egid)
    if euid != 0 and any(m.role == "plugin" for m in manifest.members):
        notes.append(f"plugin files will belong to uid {euid}, not root: restore as root to keep plugin code "
                     "root-owned (the layout's rule)")
    for m in manifest.members:
        dest = destination(m.source, to_dir)
        if m.role == "plugin":
            uid, gid = plugin_owner
            mode = m.mode & PLUGIN_MASK
            pmode, puid, pgid = PLUGIN_MASK, uid, gid
        elif m.role == "account":
            root = next(r for a, r in accounts.items() if m.path == a or m.path.startswith(a + "/"))
            assert root.uid is not None and root.gid is not None
            uid, gid = root.uid, root.gid
            mode = PRIVATE_DIR if m.kind == "dir" else m.mode & ACCOUNT_MASK
            pmode, (puid, pgid) = TRAVERSE_DIR, gateway
            if euid != 0:
                refusals.append(f"{dest}: restoring accounts.{root.name}'s directory gives it to uid {uid}, "
                                "which only root can do (run the restore as root, or restore a smaller scope)")
                continue
        else:
            uid, gid = gateway
            mode = 0o600
            below = any(_inside(a, posixpath.dirname(dest)) for a in account_dests)
            pmode, puid, pgid = (TRAVERSE_DIR if below else PRIVATE_DIR), uid, gid
        fact = facts.get(dest, DestFact(False))
        if m.kind == "dir":
            if not fact.exists:
                action = "mkdir"
            elif fact.kind == "dir":
                action = "exists"
            else:
                refusals.append(f"{dest}: a {fact.kind} is where the archive has a directory (move it away first)")
                continue
        elif not fact.exists:
            action = "create"
        elif fact.kind == "dir":
            refusals.append(f"{dest}: a directory is where the archive has a file (move it away first)")
            continue
        elif fact.kind == "file" and fact.sha256 == m.sha256 and not fact.wal:
            action = "same"
        elif force:
            action = "replace"
        else:
            why = "exists with other contents" if fact.kind == "file" else f"exists and is a {fact.kind}"
            if fact.wal:
                why = "exists, with a write-ahead log (-wal) holding changes"
            refusals.append(f"{dest}: {why} (--force keeps it as .bak and replaces it)")
            continue
        steps.append(Step(m, dest, action, uid, gid, mode, pmode, puid, pgid))
    return RestorePlan(tuple(steps), tuple(refusals), tuple(notes), gateway, to_dir)


# -- the run --------------------------------------------------------------------------------

@dataclass(frozen=True)
class RestoreResult:
    archive: str
    manifest: Manifest
    plan: RestorePlan
    owner_from: str
    dry_run: bool
    kept: tuple[tuple[str, str], ...] = ()
    created_dirs: tuple[str, ...] = ()
    checks: Mapping[str, object] | None = None


def run_restore(archive: str, *, to_dir: str | None, dry_run: bool, force: bool, owner: str | None,
                limits: Limits | None = None) -> RestoreResult:
    """Verify, plan, and (unless ``dry_run``) write and check. Refusals write nothing."""
    import os

    from ductile.system.extract import apply, dest_facts, resolve_gateway, verify_archive
    from ductile.system.manifest import RestoreRefused

    limits = limits or Limits()
    archive = os.path.abspath(archive)
    if to_dir is not None:
        to_dir = os.path.abspath(to_dir)
    manifest = verify_archive(archive, limits)
    gateway, owner_from = resolve_gateway(owner, destination(manifest.db_path, to_dir))
    plan = plan_restore(manifest, dest_facts(manifest, to_dir), to_dir=to_dir, gateway=gateway,
                        euid=os.geteuid(), egid=os.getegid(), force=force)
    if dry_run:
        return RestoreResult(archive, manifest, plan, owner_from, True)
    if not plan.ok:
        more = f" (and {len(plan.refusals) - 1} more; --dry-run lists them all)" if len(plan.refusals) > 1 else ""
        raise RestoreRefused(plan.refusals[0] + more, where=archive,
                             fix="nothing was written; use --force to keep what is there as .bak and replace it, "
                                 "or --to DIR to restore elsewhere")
    from ductile.system.archive import Interrupted, terminate_unwinds

    try:
        with terminate_unwinds():
            applied = apply(plan, archive, limits)
    except Interrupted:
        raise RestoreRefused("stopped by SIGTERM; the files staged so far were removed", where=archive,
                             fix="run the restore again: files already in place with the same contents are left "
                                 "alone") from None
    checks = None if to_dir else post_checks(manifest, gateway)
    return RestoreResult(archive, manifest, plan, owner_from, False, applied.kept, applied.created_dirs, checks)


def post_checks(manifest: Manifest, gateway: tuple[int, int]) -> dict[str, object]:
    """``doctor`` and ``system selfcheck`` on the restored config, as the gateway user (the
    checks must see what the gateway will see: its key, its modes)."""
    import json
    import os
    import subprocess
    import sys

    config = manifest.config_file
    if not os.path.isfile(config):
        return {"skipped": f"{config} is not there (this archive's scope has no config); run ductile doctor and "
                           "ductile system selfcheck once the config is in place"}
    out: dict[str, object] = {}
    as_other = os.geteuid() != gateway[0]
    for name, argv in (("doctor", ["doctor", "--json"]), ("selfcheck", ["system", "selfcheck", "--json"])):
        kwargs: dict[str, object] = {}
        if as_other:
            kwargs = {"user": gateway[0], "group": gateway[1], "extra_groups": []}
        proc = subprocess.run([sys.executable, "-m", "ductile", *argv, "--config", config], capture_output=True,
                              text=True, cwd="/", timeout=300, check=False,
                              env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "NO_COLOR": "1"}, **kwargs)  # type: ignore[call-overload]
        try:
            out[name] = json.loads(proc.stdout)
        except ValueError:
            out[name] = {"error": (proc.stderr.strip() or f"exit {proc.returncode}")[-500:]}
    return out
