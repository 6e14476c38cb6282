"""What a backup archives and what it leaves out, and why. Pure: paths and file facts in,
a ``BackupPlan`` out; ``gather`` collects the facts and ``archive`` writes the plan.

Scopes nest (SPEC §9), each adding to the one before:

    db        a consistent snapshot of the state database (never its -wal/-shm as such)
    config    + the config file and every include, the plugin lock (.checksums), the vault
    plugins   + every plugin root
    all       + every account's state_dir (the plugins' homes: caches, files they keep)

In every scope and every tree, these are excluded and listed with the reason: secret zero
by identity, by content or by key material (``secretzero``), anything under a ``secret/``
directory, symlinks, sockets, FIFOs and devices (an archive holds regular files and
directories only, so restore can refuse everything else), version control, virtualenvs,
``node_modules`` and bytecode caches, and names that are not UTF-8. A file the plan needs
but cannot read is a problem, not an exclusion: the backup refuses rather than leave a hole
— except inside an account's state_dir, whose contents the account's plugins control: what
cannot be read there (or an account tree too large or too deep) is excluded and warned
about, so no plugin can make the backup of everything else fail.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from ductile.system.secretzero import SecretZero, secret_place

SCOPES = ("db", "config", "plugins", "all")
DEFAULT_SCOPE = "config"
MANIFEST_NAME = "BACKUP_MANIFEST.txt"
UID_NAME = "uid.txt"
META_NAMES = (MANIFEST_NAME, UID_NAME)
# Bounds shared with restore, so every archive backup writes is one restore accepts.
MAX_ENTRIES = 200_000
MAX_DEPTH = 64

JUNK_DIRS = {
    ".git": "version control", ".hg": "version control", ".svn": "version control",
    ".venv": "a virtualenv (recreate it)", "venv": "a virtualenv (recreate it)",
    "node_modules": "installed node packages (recreate them)",
    "__pycache__": "bytecode cache", ".mypy_cache": "cache", ".pytest_cache": "cache",
}
JUNK_FILES = {".DS_Store": "Finder metadata"}
JUNK_SUFFIXES = {".pyc": "bytecode cache", ".pyo": "bytecode cache"}
NOT_REGULAR = {
    "symlink": "a symlink: archives hold regular files and directories only (restore refuses links)",
    "socket": "a socket: not a file",
    "fifo": "a FIFO: not a file",
    "device": "a device node: never archived",
    "other": "not a regular file or directory",
}


def scope_has(scope: str, part: str) -> bool:
    """``part``'s files are in ``scope`` (scopes nest)."""
    return SCOPES.index(scope) >= SCOPES.index(part)


def junk_reason(name: str, is_dir: bool) -> str | None:
    """Why a tree entry called ``name`` is skipped (and, for a directory, not descended)."""
    if is_dir:
        return JUNK_DIRS.get(name)
    if name in JUNK_FILES:
        return JUNK_FILES[name]
    return next((why for sfx, why in JUNK_SUFFIXES.items() if name.endswith(sfx)), None)


@dataclass(frozen=True)
class Paths:
    """Every path of the config that a scope can reach."""

    config_file: str
    config_dir: str
    config_files: tuple[str, ...]      # the root config first, then every include read
    lock_file: str                     # <config dir>/.checksums
    state_path: str
    vault_file: str
    age_key_file: str
    plugin_roots: tuple[str, ...]
    accounts: tuple[tuple[str, int, int, str], ...] = ()   # (name, uid, gid, state_dir)


@dataclass(frozen=True)
class Source:
    """One file or tree a scope asks for, and where it goes in the archive."""

    role: str          # db | config | lock | vault | plugin | account
    path: str
    arcroot: str       # archive path of the file, or of the tree's top directory
    tree: bool
    field: str         # the config field that names it, for messages
    owner: tuple[int, int] | None = None   # accounts: (uid, gid) the tree belongs to


@dataclass(frozen=True)
class Entry:
    """One fact from the walk: a path below a source (``rel`` '' is the source itself)."""

    rel: str
    kind: str          # file | dir | symlink | socket | fifo | device | other | missing | unreadable | pruned | badname
    size: int = 0
    mode: int = 0
    identity: tuple[int, int] | None = None
    mtime: float = 0.0
    sha256: str | None = None
    material: bool = False
    error: str = ""


@dataclass(frozen=True)
class Member:
    """One archive member: where it came from, what it must hash to."""

    arcname: str
    source: str
    role: str
    kind: str          # file | dir
    size: int = 0
    mode: int = 0
    sha256: str | None = None
    mtime: float = 0.0
    identity: tuple[int, int] | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"path": self.arcname, "source": self.source, "role": self.role, "type": self.kind,
                                  "mode": f"{self.mode & 0o7777:04o}"}
        if self.kind == "file":
            out["size"] = self.size
            out["sha256"] = self.sha256
        return out


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    fix: str


@dataclass(frozen=True)
class BackupPlan:
    scope: str
    sources: tuple[Source, ...]
    members: tuple[Member, ...]
    excluded: tuple[tuple[str, str], ...]      # (path, reason)
    warnings: tuple[str, ...]
    problems: tuple[Problem, ...] = ()
    pairing_code: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def files(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.kind == "file")

    @property
    def total_bytes(self) -> int:
        return sum(m.size for m in self.files)

    def with_db(self, sha256: str, size: int) -> BackupPlan:
        """The plan once the database snapshot exists: its member hashes to the snapshot."""
        members = tuple(replace(m, sha256=sha256, size=size) if m.role == "db" else m for m in self.members)
        return replace(self, members=members)


def _tree_name(path: str, taken: set[str]) -> str:
    base = posixpath.basename(path.rstrip("/")) or "root"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


def sources_for(scope: str, paths: Paths) -> tuple[Source, ...]:
    """The files and trees ``scope`` archives, in archive order."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")
    out = [Source("db", paths.state_path, f"db/{posixpath.basename(paths.state_path)}", False, "state.path")]
    if scope_has(scope, "config"):
        outside = 0
        for path in paths.config_files:
            rel = posixpath.relpath(path, paths.config_dir)
            if rel.startswith("../"):
                outside += 1
                arc = f"config/_outside/{outside}/{posixpath.basename(path)}"  # manifest.OUTSIDE
            else:
                arc = f"config/{rel}"
            out.append(Source("config", path, arc, False, "config" if path == paths.config_file else "include"))
        out.append(Source("lock", paths.lock_file, "config/" + posixpath.basename(paths.lock_file), False, "plugin lock"))
        out.append(Source("vault", paths.vault_file, f"vault/{posixpath.basename(paths.vault_file)}", False,
                          "secrets.vault_file"))
    if scope_has(scope, "plugins"):
        taken: set[str] = set()
        for i, root in enumerate(paths.plugin_roots):
            out.append(Source("plugin", root, f"plugins/{_tree_name(root, taken)}", True, f"plugin_roots[{i}]"))
    if scope_has(scope, "all"):
        for name, uid, gid, state_dir in paths.accounts:
            out.append(Source("account", state_dir, f"accounts/{name}", True, f"accounts.{name}.state_dir", (uid, gid)))
    return tuple(out)


def _path_of(src: Source, rel: str) -> str:
    return posixpath.join(src.path, rel) if rel else src.path


def _arc_of(src: Source, rel: str) -> str:
    return f"{src.arcroot}/{rel}" if rel else src.arcroot


def _missing(src: Source, entry: Entry, euid: int) -> tuple[str | None, str | None, Problem | None]:
    """(exclusion reason, warning, problem) for a source that is absent or unreadable."""
    path = src.path
    if entry.kind == "missing":
        if src.role == "db":
            return None, None, Problem(path, "the state database does not exist, so there is nothing to snapshot",
                                       "check state.path, or start the gateway once to create it")
        if src.role == "config":
            return None, None, Problem(path, "a config file disappeared while the backup read the config",
                                       "retry the backup")
        if src.role == "lock":
            return "not present: no plugin is locked (ductile plugin lock)", None, None
        if src.role == "vault":
            return None, f"no vault at {path} ({src.field}): the archive holds no secrets to restore", None
        return None, f"{src.field} {path} does not exist: nothing archived from it", None
    # unreadable
    if src.role == "account" and euid != 0:
        return (f"owned by account uid {src.owner[0] if src.owner else '?'}, readable only by root "
                "(run the all scope as root to include it)"), None, None
    return None, None, Problem(path, f"cannot read it: {entry.error}",
                               "run the backup as the gateway user (or root), or fix the file's owner and mode")


def plan_backup(scope: str, paths: Paths, facts: Mapping[str, Sequence[Entry]], zero: SecretZero, *,
                euid: int) -> BackupPlan:
    """Decide every member and exclusion. ``facts`` maps each source's ``arcroot`` to the
    entries its walk found (the source itself first, with ``rel`` '')."""
    sources = sources_for(scope, paths)
    members: list[Member] = []
    excluded: list[tuple[str, str]] = []
    warnings: list[str] = []
    problems: list[Problem] = []
    for key in zero.keys:
        excluded.append((key.path, f"{key.label}: secret zero is never archived, at any scope; keep it out of band"))
    if scope_has(scope, "db"):
        for sfx in ("-wal", "-shm"):
            excluded.append((paths.state_path + sfx, "never archived as such: the snapshot is a consistent copy "
                                                     "that already holds what it holds"))
    for src in sources:
        for entry in facts.get(src.arcroot, ()):
            path = _path_of(src, entry.rel)
            if entry.kind in ("missing", "unreadable") and not entry.rel:
                why, warning, problem = _missing(src, entry, euid)
                if why:
                    excluded.append((path, why))
                if warning:
                    warnings.append(warning)
                if problem:
                    problems.append(problem)
                continue
            if secret_place(path):
                excluded.append((path, "under a secret/ directory: never archived"))
                continue
            why = zero.reason(identity=entry.identity, sha256=entry.sha256, material=entry.material)
            if why is None and entry.kind == "pruned":
                why = junk_reason(posixpath.basename(path), True) or "skipped"
            why = why or NOT_REGULAR.get(entry.kind)
            if why is None and entry.kind == "badname":
                why = "its name is not valid UTF-8 (rename it)"
            if why is None and entry.kind == "file" and entry.rel:
                why = junk_reason(posixpath.basename(path), False)
            if why is not None:
                excluded.append((path, why))
                continue
            if entry.kind == "unreadable" and src.role == "account":
                # an account's directory holds whatever its plugins put there: what cannot be
                # read is left out and said, never a reason for the whole backup to fail
                excluded.append((path, f"cannot read it ({entry.error}); the account's own file, left out"))
                warnings.append(f"{path} was left out: {entry.error}")
                continue
            if entry.kind == "unreadable":
                problems.append(Problem(path, f"cannot read it: {entry.error}",
                                        "run the backup as the gateway user (or root), or fix its owner and mode"))
                continue
            if entry.kind not in ("file", "dir"):
                problems.append(Problem(path, f"unexpected entry ({entry.kind})", "report this"))
                continue
            members.append(Member(_arc_of(src, entry.rel), path, src.role, entry.kind, entry.size, entry.mode,
                                  entry.sha256, entry.mtime, entry.identity))
    if len(members) + len(META_NAMES) > MAX_ENTRIES:
        problems.append(Problem(paths.config_file, f"{len(members)} entries exceed the limit of {MAX_ENTRIES}",
                                "archive a smaller scope, or move bulky data out of the plugin and account trees"))
    if any(m.role == "vault" for m in members):
        code = zero.pairing_code
        warnings.append("contains the vault: it opens only with the age key current at this time"
                        + (f" (pairing code {code})" if code else "") + "; keep that key, or these secrets are lost")
    if scope_has(scope, "config") and zero.pairing_code is None:
        warnings.append(f"the age key {paths.age_key_file} could not be read: this archive has no pairing code")
    if any(m.role == "db" for m in members):
        warnings.append("contains the state database: job payloads, results and plugin state may be sensitive; "
                        "store the archive like the config")
    return BackupPlan(scope, sources, tuple(members), tuple(excluded), tuple(warnings), tuple(problems),
                      zero.pairing_code)
