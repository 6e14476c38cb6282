"""Find plugins under the plugin roots and decide which of them can be trusted to run.

A plugin is code the gateway will exec; if anyone but the operator can change those bytes,
the privilege wall is decoration. So a plugin is skipped (with an error finding naming the
path, the rule and the fix — never fatal to the others) unless: its entrypoint, as written,
is relative without ``..``; it resolves inside the plugin directory and inside a root; it is
a regular, executable file; nothing from the root down to it (directories, manifest,
entrypoint) is group- or world-writable; and none of it is owned by an account uid (an
account that can rewrite a plugin can lend itself any grant that plugin holds).

``evaluate_trust`` decides from plain stat facts and is table-tested; ``discover_plugins``
is the thin edge that walks the disk and gathers those facts.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from ductile.errors import PluginError
from ductile.findings import Finding
from ductile.plugins.manifest import MANIFEST_NAME, Manifest, entrypoint_problem, parse_manifest

MAX_WALK_DEPTH = 6        # directory levels below a root searched for manifests
MAX_WALK_DIRS = 10_000    # directories visited per root before the walk gives up
SKIP_DIRS = frozenset({"__pycache__", "node_modules", ".venv"})  # plus every dot-directory

# rule names, as they appear in a finding's field (``trust.<rule>``)
RULE_ENTRYPOINT_PATH = "entrypoint-path"
RULE_EXISTS = "entrypoint-exists"
RULE_IN_PLUGIN_DIR = "inside-plugin-dir"
RULE_IN_ROOT = "inside-plugin-root"
RULE_REGULAR = "regular-file"
RULE_EXECUTABLE = "executable"
RULE_NOT_WRITABLE = "not-group-or-world-writable"
RULE_OWNER = "not-owned-by-account"


@dataclass(frozen=True)
class Stat:
    """The two stat fields trust depends on."""

    mode: int  # st_mode: file type and permission bits
    uid: int


@dataclass(frozen=True)
class PathFacts:
    path: str  # realpath
    stat: Stat


@dataclass(frozen=True)
class TrustSnapshot:
    """Everything ``evaluate_trust`` needs, gathered by the edge; plain data only."""

    plugin: str                        # the manifest's name, for messages
    manifest_path: str                 # where the walk found it (shown as the finding's place)
    manifest: PathFacts                # the manifest file, resolved
    plugin_dir: str                    # realpath of the directory holding manifest.yaml
    entrypoint_written: str            # as in the manifest
    entrypoint_real: str               # realpath of plugin_dir/entrypoint_written
    entrypoint: Stat | None            # None when it does not resolve to anything
    dirs: tuple[PathFacts, ...]        # every directory below the root down to the entrypoint's own
    roots: tuple[str, ...]             # realpaths of the plugin roots
    forbidden_owner_uids: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Plugin:
    """A discovered plugin that passed every trust rule."""

    name: str
    directory: str      # realpath
    manifest_path: str  # realpath
    entrypoint: str     # resolved absolute path: what gets exec'd
    manifest: Manifest = field(hash=False)


@dataclass(frozen=True)
class SkippedPlugin:
    """A manifest that was found but will not run, and why."""

    name: str | None    # None when the manifest could not be parsed
    manifest_path: str
    findings: tuple[Finding, ...]


@dataclass(frozen=True)
class Discovery:
    plugins: dict[str, Plugin]
    findings: list[Finding]            # every finding: roots, skipped plugins, duplicates, manifest warnings
    skipped: tuple[SkippedPlugin, ...] = ()
    missing_roots: tuple[str, ...] = ()  # as configured


# -- the pure rules ----------------------------------------------------------------------


def _inside(path: str, directory: str) -> bool:
    """Strictly below ``directory`` (both realpaths)."""
    return path != directory and os.path.commonpath([path, directory]) == directory


def _writable_by_others(mode: int) -> str:
    bits = []
    if mode & stat.S_IWGRP:
        bits.append("group")
    if mode & stat.S_IWOTH:
        bits.append("world")
    return "- and ".join(bits)


def evaluate_trust(snap: TrustSnapshot) -> list[Finding]:
    """Every trust rule ``snap`` breaks, as error findings; empty means the plugin may run."""
    out: list[Finding] = []

    def refuse(rule: str, message: str, fix: str) -> None:
        out.append(Finding("error", "plugin", f"trust.{rule}", f"plugin {snap.plugin} skipped: {message}", fix,
                           snap.manifest_path))

    problem = entrypoint_problem(snap.entrypoint_written)
    if problem:
        refuse(RULE_ENTRYPOINT_PATH, f"entrypoint {problem[0]}", problem[1])
        return out
    if not _inside(snap.manifest.path, snap.plugin_dir):
        refuse(RULE_IN_PLUGIN_DIR, f"manifest resolves to {snap.manifest.path}, outside {snap.plugin_dir}",
               "make manifest.yaml a regular file in the plugin directory, not a link")
        return out
    if snap.entrypoint is None:
        refuse(RULE_EXISTS, f"entrypoint {snap.entrypoint_written} does not exist in {snap.plugin_dir}"
               f" (resolves to {snap.entrypoint_real})",
               "install the executable there or fix entrypoint: in the manifest")
        return out
    if not _inside(snap.entrypoint_real, snap.plugin_dir):
        refuse(RULE_IN_PLUGIN_DIR, f"entrypoint {snap.entrypoint_written} resolves to {snap.entrypoint_real}, "
               f"outside the plugin directory {snap.plugin_dir}",
               f"copy the executable into {snap.plugin_dir} instead of linking to it")
        return out
    if not any(_inside(snap.entrypoint_real, root) for root in snap.roots):
        refuse(RULE_IN_ROOT, f"entrypoint {snap.entrypoint_real} is not inside any plugin root "
               f"({', '.join(snap.roots) or 'none configured'})",
               "move the plugin under a directory listed in plugin_roots")
        return out
    if not stat.S_ISREG(snap.entrypoint.mode):
        refuse(RULE_REGULAR, f"entrypoint {snap.entrypoint_real} is not a regular file",
               "point entrypoint: at an executable file, not a directory or device")
    elif not snap.entrypoint.mode & 0o111:
        refuse(RULE_EXECUTABLE, f"entrypoint {snap.entrypoint_real} is not executable "
               f"(mode {stat.S_IMODE(snap.entrypoint.mode):04o})", f"chmod 0755 {snap.entrypoint_real}")
    if not stat.S_ISREG(snap.manifest.stat.mode):
        refuse(RULE_REGULAR, f"manifest {snap.manifest.path} is not a regular file",
               "make manifest.yaml a regular file")
    guarded = [*snap.dirs, snap.manifest, PathFacts(snap.entrypoint_real, snap.entrypoint)]
    for facts in guarded:
        who = _writable_by_others(facts.stat.mode)
        if who:
            kind = "directory" if stat.S_ISDIR(facts.stat.mode) else "file"
            refuse(RULE_NOT_WRITABLE, f"{kind} {facts.path} is {who}-writable "
                   f"(mode {stat.S_IMODE(facts.stat.mode):04o}), so others could change what runs",
                   f"chmod go-w {facts.path}")
        if facts.stat.uid in snap.forbidden_owner_uids:
            refuse(RULE_OWNER, f"{facts.path} is owned by uid {facts.stat.uid}, an account plugins run as, "
                   "so a plugin could rewrite it", f"chown root {facts.path} (plugin code belongs to the operator)")
    return out


def evaluate_root(index: int, root: str, real: str, facts: Stat | None,
                  forbidden_owner_uids: frozenset[int] = frozenset()) -> list[Finding]:
    """Whether a plugin root may be searched at all. A writable root lets others plant a
    plugin that claims a configured plugin's name, so it is refused as a whole."""
    where = f"plugin_roots[{index}]"
    if facts is None:
        return [Finding("error", "plugin", where, f"plugin root {root} does not exist",
                        "create it (root-owned, 0755) or fix the path in plugin_roots")]
    if not stat.S_ISDIR(facts.mode):
        return [Finding("error", "plugin", where, f"plugin root {root} is not a directory",
                        "point plugin_roots at a directory of plugin directories")]
    out = []
    who = _writable_by_others(facts.mode)
    if who:
        out.append(Finding("error", "plugin", where, f"plugin root {real} is {who}-writable "
                           f"(mode {stat.S_IMODE(facts.mode):04o}); none of its plugins is trusted",
                           f"chmod go-w {real}"))
    if facts.uid in forbidden_owner_uids:
        out.append(Finding("error", "plugin", where, f"plugin root {real} is owned by uid {facts.uid}, an account "
                           "plugins run as; none of its plugins is trusted", f"chown root {real}"))
    return out


# -- the edge ------------------------------------------------------------------------------


def _stat(path: str) -> Stat | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return Stat(st.st_mode, st.st_uid)


def _chain(top: str, bottom: str) -> tuple[PathFacts, ...] | None:
    """Facts for every directory strictly below ``top`` down to ``bottom`` inclusive."""
    if bottom == top:
        return ()
    rel = os.path.relpath(bottom, top)
    out = []
    current = top
    for part in rel.split(os.sep):
        current = os.path.join(current, part)
        facts = _stat(current)
        if facts is None:
            return None
        out.append(PathFacts(current, facts))
    return tuple(out)


def _walk(root: str, findings: list[Finding]) -> list[str]:
    """Every manifest.yaml below ``root`` (a realpath), bounded, never through a symlinked directory."""
    found: list[str] = []
    visited = 0
    too_deep = False

    def unreadable(err: OSError) -> None:
        findings.append(Finding("warning", "plugin", "plugin_roots", f"cannot search {err.filename}: {err.strerror}",
                                "make it readable by the gateway or move it out of the plugin root"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
        visited += 1
        if visited > MAX_WALK_DIRS:
            findings.append(Finding("warning", "plugin", "plugin_roots",
                                    f"plugin root {root} holds more than {MAX_WALK_DIRS} directories; "
                                    "the search stopped there", "keep only plugins under a plugin root"))
            break
        depth = 0 if dirpath == root else len(os.path.relpath(dirpath, root).split(os.sep))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS)
        if depth >= MAX_WALK_DEPTH and dirnames:
            too_deep = True
            dirnames[:] = []
        if MANIFEST_NAME in filenames:
            found.append(os.path.join(dirpath, MANIFEST_NAME))
    if too_deep:
        findings.append(Finding("warning", "plugin", "plugin_roots",
                                f"plugin root {root} has directories more than {MAX_WALK_DEPTH} levels deep; "
                                "they were not searched", "keep plugins near the top of a plugin root"))
    return sorted(found)


def _load_one(manifest_path: str, root: str, roots: tuple[str, ...],
              forbidden: frozenset[int]) -> tuple[Plugin | None, SkippedPlugin | None, list[Finding]]:
    plugin_dir = os.path.dirname(manifest_path)
    manifest_real = os.path.realpath(manifest_path)
    manifest_stat = _stat(manifest_real)
    if manifest_stat is None or not stat.S_ISREG(manifest_stat.mode):
        # checked before reading: opening a FIFO or device named manifest.yaml would hang or worse
        finding = Finding("error", "plugin", f"trust.{RULE_REGULAR}",
                          f"plugin at {plugin_dir} skipped: manifest.yaml is not a readable regular file",
                          "make manifest.yaml a regular file in the plugin directory", manifest_path)
        return None, SkippedPlugin(None, manifest_path, (finding,)), [finding]
    try:
        manifest, warnings = parse_manifest(manifest_path)
    except PluginError as err:
        finding = Finding("error", "plugin", "manifest", f"plugin at {plugin_dir} skipped: {err.message}",
                          err.fix, err.where or manifest_path)
        return None, SkippedPlugin(None, manifest_path, (finding,)), [finding]
    # parse_manifest has refused empty, absolute, '..' and NUL-bearing entrypoints already
    entry_real = os.path.realpath(os.path.join(plugin_dir, manifest.entrypoint))
    entry_stat = _stat(entry_real)
    dirs = _chain(root, plugin_dir) or ()
    if entry_stat is not None and _inside(entry_real, plugin_dir):
        dirs += _chain(plugin_dir, os.path.dirname(entry_real)) or ()
    snap = TrustSnapshot(
        plugin=manifest.name, manifest_path=manifest_path, manifest=PathFacts(manifest_real, manifest_stat),
        plugin_dir=plugin_dir, entrypoint_written=manifest.entrypoint, entrypoint_real=entry_real,
        entrypoint=entry_stat, dirs=dirs, roots=roots, forbidden_owner_uids=forbidden,
    )
    refusals = evaluate_trust(snap)
    if refusals:
        return None, SkippedPlugin(manifest.name, manifest_path, tuple(refusals)), warnings + refusals
    return Plugin(manifest.name, plugin_dir, manifest_real, entry_real, manifest), None, warnings


def discover_plugins(roots: Iterable[str], *,
                     forbidden_owner_uids: frozenset[int] = frozenset()) -> Discovery:
    """Walk ``roots`` (in the order given) for manifests and keep the trusted plugins.

    On a duplicate name the first wins, ordered by root then by manifest path; the others
    are reported as warnings. Nothing here raises for one bad plugin or root.
    """
    forbidden = frozenset(forbidden_owner_uids)
    findings: list[Finding] = []
    searchable: list[str] = []
    missing: list[str] = []
    for i, root in enumerate(roots):
        real = os.path.realpath(root)
        facts = _stat(real)
        if facts is None:
            missing.append(root)
        problems = evaluate_root(i, root, real, facts, forbidden)
        findings += problems
        if not problems and real not in searchable:
            searchable.append(real)
    trusted_roots = tuple(searchable)

    plugins: dict[str, Plugin] = {}
    skipped: list[SkippedPlugin] = []
    seen: set[str] = set()
    for root in trusted_roots:
        for manifest_path in _walk(root, findings):
            if manifest_path in seen:  # nested or repeated roots
                continue
            seen.add(manifest_path)
            plugin, skip, notes = _load_one(manifest_path, root, trusted_roots, forbidden)
            findings += notes
            if skip is not None:
                skipped.append(skip)
                continue
            assert plugin is not None
            first = plugins.get(plugin.name)
            if first is not None:
                findings.append(Finding(
                    "warning", "plugin", "duplicate",
                    f"plugin {plugin.name} at {plugin.directory} is ignored: the name is already taken by "
                    f"{first.directory}", "rename one of them (manifest name:) or remove the copy", manifest_path))
                continue
            plugins[plugin.name] = plugin
    return Discovery(plugins, findings, tuple(skipped), tuple(missing))
