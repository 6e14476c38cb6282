"""Find plugins under the plugin roots and decide which of them can be trusted to run.

A plugin is code the gateway will exec; if anyone but the operator can change those bytes,
the privilege wall is decoration. So a plugin is skipped (with an error finding naming the
path, the rule and the fix — never fatal to the others) unless: its entrypoint, as written,
is relative without ``..``; it resolves inside the plugin directory and inside a root; it is
a regular, executable file; and **everything it executes** passes ``exectrust``: every
entry of its directory tree (helpers, vendored modules, bytecode caches), every directory
from ``/`` down to it, and every interpreter its ``#!`` line leads to (``env`` and symlinks
followed) — none owned by an account uid, none replaceable by others (an account that can
rewrite a plugin can lend itself any grant that plugin holds).

``evaluate_trust`` decides from plain facts and is table-tested; ``discover_plugins`` is
the thin edge that walks the disk (through ``execfacts``) and gathers those facts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from ductile.errors import PluginError
from ductile.findings import Finding
from ductile.plugins import execfacts
from ductile.plugins.exectrust import (RULE_NOT_WRITABLE, RULE_OWNER,  # noqa: F401 (re-exported)
                                       InterpreterLink, Judged, TreeEntry, below_root_problems,
                                       interpreter_problems, tree_problems)
from ductile.plugins.manifest import MANIFEST_NAME, Manifest, entrypoint_problem, parse_manifest
from ductile.privsep.pathfacts import Resolution
from ductile.privsep.trust import Node, Owners, Step, chain_problems

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
RULE_WHOLE_TREE = "whole-tree"


@dataclass(frozen=True)
class TrustSnapshot:
    """Everything ``evaluate_trust`` needs, gathered by the edge; plain data only."""

    plugin: str                        # the manifest's name, for messages
    manifest_path: str                 # where the walk found it (shown as the finding's place)
    manifest: Node                     # the manifest file, resolved
    plugin_dir: str                    # realpath of the directory holding manifest.yaml
    entrypoint_written: str            # as in the manifest
    entrypoint_real: str               # realpath of plugin_dir/entrypoint_written
    entrypoint: Node | None            # None when it does not resolve to anything
    roots: tuple[str, ...]             # realpaths of the plugin roots
    owners: Owners = Owners(frozenset(), frozenset({0}))
    below_root: tuple[Step, ...] = ()  # every step from the plugin root down to plugin_dir
    tree: tuple[TreeEntry, ...] = ()   # every entry below plugin_dir
    tree_error: str = ""               # why the tree could not be listed whole
    interpreter: tuple[InterpreterLink, ...] = ()


@dataclass(frozen=True)
class Plugin:
    """A discovered plugin that passed every trust rule."""

    name: str
    directory: str      # realpath
    manifest_path: str  # realpath
    entrypoint: str     # resolved absolute path: what gets exec'd
    manifest: Manifest = field(hash=False)
    dir_id: tuple[int, int]             # (st_dev, st_ino) of directory at discovery: checked again at spawn
    interpreter: tuple[str, ...] = ()   # the #! chain's files, resolved, in exec order


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
    if not snap.entrypoint.is_regular:
        refuse(RULE_REGULAR, f"entrypoint {snap.entrypoint_real} is not a regular file",
               "point entrypoint: at an executable file, not a directory or device")
    elif not snap.entrypoint.mode & 0o111:
        refuse(RULE_EXECUTABLE, f"entrypoint {snap.entrypoint_real} is not executable "
               f"(mode {snap.entrypoint.perms:04o})", f"chmod 0755 {snap.entrypoint_real}")
    if not snap.manifest.is_regular:
        refuse(RULE_REGULAR, f"manifest {snap.manifest.path} is not a regular file",
               "make manifest.yaml a regular file")
    if snap.tree_error:
        refuse(RULE_WHOLE_TREE, f"the plugin directory {snap.plugin_dir} cannot be checked whole: {snap.tree_error}",
               "keep only the plugin's own files in its directory, readable by the gateway")
    judged: list[Judged] = below_root_problems(snap.below_root, snap.owners)
    judged += tree_problems(snap.plugin_dir, snap.tree, snap.owners)
    judged += interpreter_problems(snap.interpreter, snap.owners)
    seen: set[tuple[str, str]] = set()
    for j in judged:
        if (j.rule, j.problem.message) in seen:
            continue
        seen.add((j.rule, j.problem.message))
        refuse(j.rule, j.problem.message, j.problem.fix)
    return out


def evaluate_root(index: int, root: str, real: str, facts: Node | None, owners: Owners,
                  resolution: Resolution | None = None) -> list[Finding]:
    """Whether a plugin root may be searched at all: every step from ``/`` to it (the
    configured path, symlinks followed) must be out of the accounts' reach. A root others
    can change lets them plant a plugin that claims a configured plugin's name, so it is
    refused as a whole."""
    where = f"plugin_roots[{index}]"
    if facts is None:
        return [Finding("error", "plugin", where, f"plugin root {root} does not exist",
                        "create it (root-owned, 0755) or fix the path in plugin_roots")]
    if not facts.is_dir:
        return [Finding("error", "plugin", where, f"plugin root {root} is not a directory",
                        "point plugin_roots at a directory of plugin directories")]
    steps = resolution.steps if resolution is not None else (Step(None, facts),)
    out = []
    for p in chain_problems(steps, owners):
        out.append(Finding("error", "plugin", where, f"plugin root {root}: {p.message}; none of its plugins is trusted",
                           p.fix))
    return out


# -- the edge ------------------------------------------------------------------------------


def _node(path: str) -> Node | None:
    """``stat`` (following links) of ``path``, labelled with ``path``."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return Node(path, st.st_mode, st.st_uid, st.st_gid)


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


def _manifest_node(manifest_path: str) -> Node | None:
    """The resolved manifest, if it is a regular file: checked before reading, since opening
    a FIFO or device named manifest.yaml would hang or worse."""
    node = _node(os.path.realpath(manifest_path))
    return node if node is not None and node.is_regular else None


def _not_regular(manifest_path: str) -> tuple[None, SkippedPlugin, list[Finding]]:
    plugin_dir = os.path.dirname(manifest_path)
    finding = Finding("error", "plugin", f"trust.{RULE_REGULAR}",
                      f"plugin at {plugin_dir} skipped: manifest.yaml is not a readable regular file",
                      "make manifest.yaml a regular file in the plugin directory", manifest_path)
    return None, SkippedPlugin(None, manifest_path, (finding,)), [finding]


def _load_one(manifest_path: str, root: str, roots: tuple[str, ...], owners: Owners, search_path: str,
              resolver: execfacts.Resolver) -> tuple[Plugin | None, SkippedPlugin | None, list[Finding]]:
    plugin_dir = os.path.dirname(manifest_path)
    manifest_node = _manifest_node(manifest_path)
    if manifest_node is None:
        return _not_regular(manifest_path)
    try:
        manifest, warnings = parse_manifest(manifest_path)
    except PluginError as err:
        finding = Finding("error", "plugin", "manifest", f"plugin at {plugin_dir} skipped: {err.message}",
                          err.fix, err.where or manifest_path)
        return None, SkippedPlugin(None, manifest_path, (finding,)), [finding]
    # parse_manifest has refused empty, absolute, '..' and NUL-bearing entrypoints already
    entry_real = os.path.realpath(os.path.join(plugin_dir, manifest.entrypoint))
    entry_node = _node(entry_real)
    below_root = tuple(step for step in resolver(plugin_dir).steps if _inside(step.node.path, root))
    tree, tree_error = execfacts.tree(plugin_dir)
    chain: tuple[InterpreterLink, ...] = ()
    if entry_node is not None and entry_node.is_regular and _inside(entry_real, plugin_dir):
        chain = execfacts.interpreter_chain(entry_real, search_path, resolver)
    snap = TrustSnapshot(
        plugin=manifest.name, manifest_path=manifest_path, manifest=manifest_node,
        plugin_dir=plugin_dir, entrypoint_written=manifest.entrypoint, entrypoint_real=entry_real,
        entrypoint=entry_node, roots=roots, owners=owners, below_root=below_root, tree=tree,
        tree_error=tree_error, interpreter=chain,
    )
    refusals = evaluate_trust(snap)
    if refusals:
        return None, SkippedPlugin(manifest.name, manifest_path, tuple(refusals)), warnings + refusals
    st = os.stat(plugin_dir)
    return Plugin(manifest.name, plugin_dir, manifest_node.path, entry_real, manifest, (st.st_dev, st.st_ino),
                  execfacts.chain_files(chain)), None, warnings


def _refused_root_plugins(root: str, problems: list[Finding]) -> list[SkippedPlugin]:
    """Name the plugins of a root that is refused as a whole, so a configured plugin is
    reported as refused (and why) rather than as missing."""
    out = []
    for manifest_path in _walk(root, []):
        name = None
        if _manifest_node(manifest_path) is not None:
            try:
                name = parse_manifest(manifest_path)[0].name
            except PluginError:
                pass
        out.append(SkippedPlugin(name, manifest_path, tuple(problems)))
    return out


def default_owners() -> Owners:
    return Owners(frozenset(), frozenset({0, os.geteuid()}))


def discover_plugins(roots: Iterable[str], *, owners: Owners | None = None,
                     search_path: str | None = None) -> Discovery:
    """Walk ``roots`` (in the order given) for manifests and keep the trusted plugins.

    ``owners``: account uids (never trusted) and the trusted uids (root and the gateway).
    ``search_path``: the PATH plugins get, which ``#!/usr/bin/env`` searches.
    On a duplicate name the first wins, ordered by root then by manifest path; the others
    are reported as warnings. Nothing here raises for one bad plugin or root.
    """
    owners = owners or default_owners()
    search_path = search_path if search_path is not None else os.environ.get("PATH", "/usr/bin:/bin")
    resolver = execfacts.Resolver()
    findings: list[Finding] = []
    searchable: list[str] = []
    missing: list[str] = []
    skipped: list[SkippedPlugin] = []
    for i, root in enumerate(roots):
        real = os.path.realpath(root)
        facts = _node(real)
        if facts is None:
            missing.append(root)
        problems = evaluate_root(i, root, real, facts, owners, resolver(os.path.abspath(root)))
        findings += problems
        if not problems and real not in searchable:
            searchable.append(real)
        elif problems and facts is not None and facts.is_dir:
            skipped += _refused_root_plugins(real, problems)
    trusted_roots = tuple(searchable)

    plugins: dict[str, Plugin] = {}
    seen: set[str] = set()
    for root in trusted_roots:
        for manifest_path in _walk(root, findings):
            if manifest_path in seen:  # nested or repeated roots
                continue
            seen.add(manifest_path)
            plugin, skip, notes = _load_one(manifest_path, root, trusted_roots, owners, search_path, resolver)
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
