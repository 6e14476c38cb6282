"""Trust of everything a plugin executes, as pure rules over gathered facts (SPEC §4).

A plugin is the whole directory, not its entrypoint: ``run.py`` imports the
``_stopwatch.py`` next to it, and the ``#!`` line hands the file to an interpreter that may
itself be a script. Each of these must be out of every account's reach, by the one rule of
``privsep.trust``:

    what                                       | rule
    -------------------------------------------|-------------------------------------------------
    every entry of the plugin tree             | not owned by an account uid; not group/world-
      (files, directories, bytecode caches)    |   writable; a regular file, directory or symlink
    a symlink in the tree                      | resolves inside the plugin directory
    every directory from the root to the       | not owned by an account; its parent not writable
      plugin directory                         |   by others (sticky rule)
    each interpreter of the #! chain           | absolute; exists; every step from / to it safe
      (env followed, symlinks followed, nested)|   (chain rule); a regular, executable file
    each PATH entry env searched to find it    | absolute; exists (or could not be created by an
                                               |   account); every step safe; not g/o-writable

A broken rule skips the plugin with an error finding naming the path and the fix.
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from dataclasses import dataclass

from ductile.privsep.pathfacts import Resolution
from ductile.privsep.sidedoor import path_entry_problems
from ductile.privsep.trust import Node, Owners, Problem, Step, chain_problems, leaf_problem, owner_problem

RULE_TREE = "plugin-tree"
RULE_NOT_WRITABLE = "not-group-or-world-writable"
RULE_OWNER = "not-owned-by-account"
RULE_LINK = "symlink-inside"
RULE_INTERPRETER = "interpreter"
RULE_SEARCH_PATH = "interpreter-path"


@dataclass(frozen=True)
class TreeEntry:
    """One entry below the plugin directory (``rel``: relative path), as lstat saw it."""

    rel: str
    node: Node
    link_real: str | None = None     # a symlink's resolved target (None: dangling or not a link)


@dataclass(frozen=True)
class InterpreterLink:
    """One program in the chain the kernel runs for the entrypoint."""

    named: str                       # as written (#! path, or the command env looks up)
    via: str                         # "the #! line of X" / "env's PATH lookup from the #! line of X"
    resolution: Resolution | None    # None when it could not be located
    searched: tuple[Resolution, ...] = ()   # PATH entries env looked in, up to the hit
    problem: str = ""                # a parse or lookup failure, already worded

    @property
    def real(self) -> str | None:
        return self.resolution.real if self.resolution is not None else None


@dataclass(frozen=True)
class Judged:
    rule: str
    problem: Problem


def _p(rule: str, path: str, message: str, fix: str) -> Judged:
    return Judged(rule, Problem(rule, path, message, fix))


def inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def tree_problems(plugin_dir: str, tree: Sequence[TreeEntry], owners: Owners) -> list[Judged]:
    out: list[Judged] = []
    for entry in tree:
        node = entry.node
        own = owner_problem(node, owners)
        if own:
            out.append(Judged(RULE_OWNER, own))
        loose = leaf_problem(node)
        if loose:
            out.append(Judged(RULE_NOT_WRITABLE, loose))
        if not (node.is_dir or node.is_regular or node.is_symlink):
            out.append(_p(RULE_TREE, node.path, f"{node.path} is not a regular file, directory or symlink",
                          f"remove it from the plugin directory {plugin_dir}"))
        if node.is_symlink:
            if entry.link_real is None:
                out.append(_p(RULE_LINK, node.path, f"symlink {node.path} does not resolve",
                              f"remove it or point it at a file inside {plugin_dir}"))
            elif not inside(entry.link_real, plugin_dir):
                out.append(_p(RULE_LINK, node.path, f"symlink {node.path} points outside the plugin directory "
                              f"(to {entry.link_real}), where the lock cannot vouch for it",
                              f"copy what it points at into {plugin_dir}"))
    return out


def _rule(problem: Problem) -> str:
    return RULE_OWNER if problem.rule == "owned-by-account" else RULE_NOT_WRITABLE


def below_root_problems(steps: Sequence[Step], owners: Owners) -> list[Judged]:
    """The directories from a plugin root down to the plugin directory."""
    return [Judged(_rule(p), p) for p in chain_problems(steps, owners)]


def interpreter_problems(chain: Sequence[InterpreterLink], owners: Owners) -> list[Judged]:
    out: list[Judged] = []
    for link in chain:
        if link.problem:
            out.append(_p(RULE_INTERPRETER, link.named or "#!", f"{link.via}: {link.problem}",
                          "use an absolute interpreter path, e.g. #!/usr/bin/python3"))
            continue
        for searched in link.searched:
            out += [Judged(RULE_SEARCH_PATH, p) for p in path_entry_problems(searched, owners, link.via)]
        res = link.resolution
        if res is None or res.real is None:
            why = res.error if res is not None and res.error else "it does not exist"
            out.append(_p(RULE_INTERPRETER, link.named, f"interpreter {link.named} ({link.via}) cannot be used: {why}",
                          "install it, or fix the #! line"))
            continue
        for problem in chain_problems(res.steps, owners):
            out.append(Judged(RULE_INTERPRETER, Problem(problem.rule, problem.path,
                                                        f"interpreter {link.named} ({link.via}): {problem.message}",
                                                        problem.fix)))
        final = res.steps[-1].node
        if not final.is_regular:
            out.append(_p(RULE_INTERPRETER, res.real, f"interpreter {res.real} ({link.via}) is not a regular file",
                          "point the #! line at an executable file"))
        elif not final.mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH):
            out.append(_p(RULE_INTERPRETER, res.real, f"interpreter {res.real} ({link.via}) is not executable",
                          f"chmod a+x {res.real}"))
    return out
