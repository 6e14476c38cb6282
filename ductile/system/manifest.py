"""``BACKUP_MANIFEST.txt``: what backup writes and what restore is willing to believe. Pure.

The manifest is YAML (upstream's key names where upstream has them: ``ductile_version``,
``hostname``, ``created_at``, ``scope``, ``backup_uid``, ``source_db_path``,
``source_db_sha256``, ``included``, ``excluded[{reason, items}]``, ``plugin_roots``,
``warnings``), plus ``members``: one row per archive member with the path it came from,
its role, size, mode and sha256. Restore trusts nothing it has not checked:
``parse_manifest`` refuses, one line each, any member name that is absolute, holds ``..``
or an empty component, any destination that is relative, not normalised, under a
``secret/`` directory or the age key itself, any tree member whose destination is not its
tree's root joined with its name, and anything over the bounds in ``Limits``.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from ductile.errors import DuctileError
from ductile.system.plan import MANIFEST_NAME, MAX_ENTRIES, META_NAMES, SCOPES, BackupPlan, Paths
from ductile.system.secretzero import PAIRING_ALPHABET, PAIRING_LENGTH, secret_place

KIND = "ductile-backup"
FORMAT = 1
ROLES = {"db": "db/", "config": "config/", "lock": "config/", "vault": "vault/", "plugin": "plugins/",
         "account": "accounts/"}
FILE_ONLY = ("db", "config", "lock", "vault")
OUTSIDE = "config/_outside/"   # includes that live outside the config directory (their paths are shown first)
TREE_ROLES = {"plugin": "plugin_roots", "account": "accounts"}
SHA256 = re.compile(r"^[0-9a-f]{64}$")
MODE = re.compile(r"^[0-7]{3,4}$")
PAIRING = re.compile(f"^[{PAIRING_ALPHABET}]{{{PAIRING_LENGTH}}}$")
UID_MAX = 2_147_483_647


class RestoreRefused(DuctileError):
    """The archive is refused: nothing has been written."""

    kind = "restore"


@dataclass(frozen=True)
class Limits:
    """Bounds on what restore reads: entries, bytes in all, the manifest's own size."""

    max_entries: int = MAX_ENTRIES
    max_bytes: int = 64 * 1024**3
    max_manifest: int = 16 * 1024**2


# -- writing ------------------------------------------------------------------------------

def build_manifest(plan: BackupPlan, paths: Paths, *, version: str, hostname: str, created_at: str,
                   uid: int, user: str) -> dict[str, Any]:
    db = next((m for m in plan.members if m.role == "db"), None)
    grouped: dict[str, list[str]] = {}
    for path, reason in plan.excluded:
        grouped.setdefault(reason, []).append(path)
    roots = {s.arcroot: s for s in plan.sources if s.tree}
    return {
        "kind": KIND,
        "format": FORMAT,
        "ductile_version": version,
        "hostname": hostname,
        "created_at": created_at,
        "created_by": {"uid": uid, "user": user},
        "scope": plan.scope,
        "backup_uid": plan.pairing_code,
        "source_config": paths.config_file,
        "source_config_dir": paths.config_dir,
        "source_db_path": paths.state_path,
        "source_db_sha256": db.sha256 if db else None,
        "source_vault_file": paths.vault_file,
        "source_age_key_file": paths.age_key_file,
        "plugin_roots": [{"archive_path": s.arcroot, "source_path": s.path}
                         for s in roots.values() if s.role == "plugin"],
        "accounts": [{"archive_path": s.arcroot, "source_path": s.path, "name": s.arcroot.split("/", 1)[1],
                      "uid": s.owner[0], "gid": s.owner[1]}
                     for s in roots.values() if s.role == "account" and s.owner is not None],
        "members": [m.as_dict() for m in plan.members],
        "included": [m.arcname for m in plan.files],
        "excluded": [{"reason": reason, "items": items} for reason, items in grouped.items()],
        "warnings": list(plan.warnings),
    }


def render_manifest(doc: Mapping[str, Any]) -> bytes:
    head = ("# ductile backup manifest: what this archive holds, where each file came from, its sha256.\n"
            "# `ductile system restore` verifies every member against it before writing anything.\n")
    return (head + yaml.safe_dump(dict(doc), sort_keys=False, allow_unicode=True, width=1000)).encode("utf-8")


def uid_text(code: str | None) -> bytes:
    if code is None:
        return b"none: the age key could not be read when this archive was made\n"
    return (f"{code}\nThe pairing code of the age key that opens this archive's vault. Keep it written next to "
            "that key; `ductile system restore` prints it.\n").encode()


# -- reading ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ManifestMember:
    path: str
    source: str
    role: str
    kind: str
    size: int
    mode: int
    sha256: str | None


@dataclass(frozen=True)
class TreeRoot:
    role: str
    archive_path: str
    source_path: str
    name: str = ""
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True)
class Manifest:
    scope: str
    created_at: str
    hostname: str
    version: str
    backup_uid: str | None
    config_file: str
    db_path: str
    vault_file: str
    age_key_file: str
    members: tuple[ManifestMember, ...]
    roots: tuple[TreeRoot, ...]
    warnings: tuple[str, ...]
    raw: Mapping[str, Any]

    @property
    def files(self) -> tuple[ManifestMember, ...]:
        return tuple(m for m in self.members if m.kind == "file")

    def member(self, path: str) -> ManifestMember | None:
        return next((m for m in self.members if m.path == path), None)

    @property
    def key_paths(self) -> tuple[str, ...]:
        return (self.age_key_file, self.age_key_file + ".old", self.age_key_file + ".new")


def arcname_problem(name: object) -> str | None:
    """Why ``name`` is not a safe archive member name, or None."""
    if not isinstance(name, str) or not name:
        return "the name is empty or not text"
    if "\x00" in name or "\n" in name or "\r" in name:
        return "the name holds a NUL or newline"
    if name.startswith("/"):
        return "the name is an absolute path"
    if len(name) > 4096:
        return "the name is longer than 4096 characters"
    parts = name.split("/")
    if ".." in parts:
        return "the name climbs out with '..'"
    if any(p in ("", ".") for p in parts):
        return "the name has an empty or '.' component"
    return None


def path_problem(path: object) -> str | None:
    """Why ``path`` is not an absolute, normalised path, or None."""
    if not isinstance(path, str) or not path.startswith("/"):
        return "not an absolute path"
    if "\x00" in path or "\n" in path or "\r" in path:
        return "the path holds a NUL or newline"
    if posixpath.normpath(path) != path or path.startswith("//") or "/../" in path + "/":
        return "not a normalised path"
    return None


def destination_problem(path: object) -> str | None:
    """Why ``path`` is not a destination restore may write, or None."""
    problem = path_problem(path)
    if problem:
        return f"the destination is {problem}" if problem.startswith("not") else problem
    assert isinstance(path, str)
    if path == "/":
        return "the destination is /"
    if secret_place(path):
        return "the destination lies under a secret/ directory, which restore never writes"
    return None


def _refuse(message: str, fix: str = "use an archive made by `ductile system backup`; this one is damaged or "
                                     "was altered") -> RestoreRefused:
    return RestoreRefused(message, where=MANIFEST_NAME, fix=fix)


def _text(doc: Mapping[str, Any], key: str, *, absolute: bool = False) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise _refuse(f"{key} is missing or not text")
    if absolute:
        problem = path_problem(value)
        if problem:
            raise _refuse(f"{key}: {problem} ({value!r})")
    return value


def _member(row: object, i: int, limits: Limits) -> ManifestMember:
    if not isinstance(row, dict):
        raise _refuse(f"members[{i}] is not a mapping")
    path, source, role, kind = row.get("path"), row.get("source"), row.get("role"), row.get("type")
    problem = arcname_problem(path)
    if problem:
        raise _refuse(f"members[{i}] {path!r}: {problem}")
    assert isinstance(path, str)
    if path in META_NAMES:
        raise _refuse(f"members[{i}] {path!r}: a reserved name")
    if role not in ROLES or not path.startswith(ROLES[role]):
        raise _refuse(f"members[{i}] {path!r}: role {role!r} is unknown or does not match the name")
    if kind not in ("file", "dir") or (role in FILE_ONLY and kind != "file"):
        raise _refuse(f"members[{i}] {path!r}: type {kind!r} is not allowed (regular files and directories only)")
    problem = destination_problem(source)
    if problem:
        raise _refuse(f"members[{i}] {path!r}: {problem} ({source!r})")
    assert isinstance(source, str)
    mode_text = row.get("mode")
    if not isinstance(mode_text, str) or not MODE.match(mode_text):
        raise _refuse(f"members[{i}] {path!r}: mode {mode_text!r} is not octal")
    size: int = 0
    digest: str | None = None
    if kind == "file":
        raw_size, raw_digest = row.get("size"), row.get("sha256")
        if not isinstance(raw_size, int) or isinstance(raw_size, bool) or not 0 <= raw_size <= limits.max_bytes:
            raise _refuse(f"members[{i}] {path!r}: size {raw_size!r} is not a byte count within {limits.max_bytes}")
        if not isinstance(raw_digest, str) or not SHA256.match(raw_digest):
            raise _refuse(f"members[{i}] {path!r}: sha256 is missing or malformed")
        size, digest = raw_size, raw_digest
    return ManifestMember(path, source, role, kind, size, int(mode_text, 8) & 0o7777, digest)


def _roots(doc: Mapping[str, Any]) -> tuple[TreeRoot, ...]:
    out: list[TreeRoot] = []
    for role, key in TREE_ROLES.items():
        rows = doc.get(key) or []
        if not isinstance(rows, list):
            raise _refuse(f"{key} is not a list")
        for j, row in enumerate(rows):
            if not isinstance(row, dict):
                raise _refuse(f"{key}[{j}] is not a mapping")
            arc, src = row.get("archive_path"), row.get("source_path")
            problem = arcname_problem(arc) or destination_problem(src)
            if problem or not isinstance(arc, str) or not arc.startswith(ROLES[role]) or arc.count("/") != 1:
                raise _refuse(f"{key}[{j}]: {problem or 'archive_path does not name one tree'}")
            assert isinstance(src, str)
            if role != "account":
                out.append(TreeRoot(role, arc, src))
                continue
            ids: list[int] = []
            for what in ("uid", "gid"):
                n = row.get(what)
                if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= UID_MAX:
                    raise _refuse(f"{key}[{j}].{what} {n!r} is not an account id (1..{UID_MAX}, never root)")
                ids.append(n)
            name = row.get("name")
            if not isinstance(name, str) or arc != f"accounts/{name}":
                raise _refuse(f"{key}[{j}].name {name!r} does not match {arc}")
            out.append(TreeRoot(role, arc, src, name, ids[0], ids[1]))
    arcs = [r.archive_path for r in out]
    if len(set(arcs)) != len(arcs):
        raise _refuse("two trees share one archive path")
    return tuple(out)


def _check_tree_member(m: ManifestMember, roots: tuple[TreeRoot, ...]) -> None:
    """A tree member's destination is its root's source path joined with its name below the root."""
    for root in roots:
        if root.role != m.role:
            continue
        if m.path == root.archive_path:
            if m.source != root.source_path:
                break
            return
        if m.path.startswith(root.archive_path + "/"):
            if m.source != posixpath.join(root.source_path, m.path[len(root.archive_path) + 1:]):
                break
            return
    raise _refuse(f"member {m.path!r}: its destination {m.source!r} is not inside the tree it belongs to")


def parse_manifest(data: bytes, limits: Limits = Limits()) -> Manifest:
    """Parse and check the manifest; any problem is a ``RestoreRefused`` naming the entry."""
    if len(data) > limits.max_manifest:
        raise _refuse(f"the manifest is larger than {limits.max_manifest} bytes")
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise _refuse(f"the manifest is not valid YAML ({type(err).__name__})") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise _refuse("this is not a ductile backup manifest")
    fmt = doc.get("format")
    if fmt != FORMAT:
        raise _refuse(f"manifest format {fmt!r} is not {FORMAT}",
                      "restore it with the ductile release that made it (see ductile_version)")
    scope = doc.get("scope")
    if scope not in SCOPES:
        raise _refuse(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
    code = doc.get("backup_uid")
    if code is not None and (not isinstance(code, str) or not PAIRING.match(code)):
        raise _refuse(f"backup_uid {code!r} is not a pairing code")
    rows = doc.get("members")
    if not isinstance(rows, list):
        raise _refuse("members is missing")
    if len(rows) + len(META_NAMES) > limits.max_entries:
        raise _refuse(f"{len(rows)} members exceed the limit of {limits.max_entries} entries",
                      "if you made this archive, raise the limit (--max-entries)")
    members = tuple(_member(row, i, limits) for i, row in enumerate(rows))
    total = sum(m.size for m in members)
    if total > limits.max_bytes:
        raise _refuse(f"the members add up to {total} bytes, over the limit of {limits.max_bytes}",
                      "if you made this archive, raise the limit (--max-size)")
    for what in ("path", "source"):
        seen: set[str] = set()
        for m in members:
            value = getattr(m, what)
            if value in seen:
                raise _refuse(f"two members share the {what} {value!r}")
            seen.add(value)
    key = _text(doc, "source_age_key_file", absolute=True)
    db_path = _text(doc, "source_db_path", absolute=True)
    vault = _text(doc, "source_vault_file", absolute=True)
    config_file = _text(doc, "source_config", absolute=True)
    config_dir = _text(doc, "source_config_dir", absolute=True)
    roots = _roots(doc)
    for m in members:
        if m.source in (key, key + ".old", key + ".new"):
            raise _refuse(f"member {m.path!r} would be written over the age key {m.source}; restore never writes "
                          "secret zero")
        if m.role in TREE_ROLES:
            _check_tree_member(m, roots)
        elif m.role == "db" and m.source != db_path:
            raise _refuse(f"member {m.path!r}: a database member must restore to source_db_path")
        elif m.role == "vault" and m.source != vault:
            raise _refuse(f"member {m.path!r}: a vault member must restore to source_vault_file")
        elif m.role in ("config", "lock") and not m.path.startswith(OUTSIDE) \
                and m.source != posixpath.join(config_dir, m.path[len("config/"):]):
            raise _refuse(f"member {m.path!r}: its destination {m.source!r} is not that name inside "
                          "source_config_dir")
    for role in ("db", "vault", "lock"):
        if sum(1 for m in members if m.role == role) > 1:
            raise _refuse(f"more than one {role} member")
    db = next((m for m in members if m.role == "db"), None)
    if db is not None and doc.get("source_db_sha256") != db.sha256:
        raise _refuse("source_db_sha256 does not match the database member")
    warnings = doc.get("warnings") or []
    return Manifest(
        scope=str(scope), created_at=str(doc.get("created_at", "")), hostname=str(doc.get("hostname", "")),
        version=str(doc.get("ductile_version", "")), backup_uid=code, config_file=config_file, db_path=db_path,
        vault_file=vault, age_key_file=key, members=members, roots=roots,
        warnings=tuple(str(w) for w in warnings) if isinstance(warnings, list) else (), raw=doc,
    )
