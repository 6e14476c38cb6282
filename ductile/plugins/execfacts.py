"""The edge that gathers what ``exectrust`` judges: the plugin tree (every entry, ``lstat``),
and the chain of programs its ``#!`` line makes the kernel run, looked up the way ``env``
and ``execve`` would. Nothing here decides anything; every fact is plain data.
"""

from __future__ import annotations

import os
import posixpath
import stat

from ductile.plugins.exectrust import InterpreterLink, TreeEntry
from ductile.plugins.shebang import LINE_MAX, env_call, is_env, parse_shebang, search_dirs
from ductile.privsep.pathfacts import Resolution, resolve
from ductile.privsep.trust import Node

MAX_TREE_ENTRIES = 20_000   # entries below one plugin directory before trust gives up
MAX_NESTING = 4             # #! interpreters that are themselves scripts (the kernel's limit)


class Resolver:
    """``pathfacts.resolve`` with a memory, for one discovery run: forty plugins sharing
    ``/usr/bin/python3`` walk it once."""

    def __init__(self) -> None:
        self._seen: dict[str, Resolution] = {}

    def __call__(self, path: str) -> Resolution:
        if path not in self._seen:
            self._seen[path] = resolve(path)
        return self._seen[path]


def tree(plugin_dir: str) -> tuple[tuple[TreeEntry, ...], str]:
    """Every entry below ``plugin_dir`` (symlinks listed, never followed), sorted; and the
    reason it could not be listed whole ('' when it could)."""
    out: list[TreeEntry] = []
    errors: list[str] = []

    def failed(err: OSError) -> None:
        errors.append(f"cannot list {err.filename}: {err.strerror}")

    for dirpath, dirnames, filenames in os.walk(plugin_dir, onerror=failed, followlinks=False):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError as err:
                errors.append(f"cannot look at {path}: {err.strerror}")
                continue
            node = Node(path, st.st_mode, st.st_uid, st.st_gid)
            link_real = None
            if stat.S_ISLNK(st.st_mode):
                res = resolve(path)
                link_real = res.real
            out.append(TreeEntry(os.path.relpath(path, plugin_dir), node, link_real))
            if len(out) > MAX_TREE_ENTRIES:
                return tuple(out), f"more than {MAX_TREE_ENTRIES} entries"
    return tuple(sorted(out, key=lambda e: e.rel)), "; ".join(errors)


def _head(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        return os.read(fd, LINE_MAX)
    finally:
        os.close(fd)


def _lookup(command: str, path: str, resolver: Resolver) -> tuple[Resolution | None, tuple[Resolution, ...]]:
    """Where ``execvp`` finds ``command`` on ``path``, and every entry it looked in."""
    searched: list[Resolution] = []
    for directory in search_dirs(path):
        if not directory.startswith("/"):
            searched.append(Resolution(directory, (), None))
            continue
        res = resolver(directory)
        searched.append(res)
        if res.real is None:
            continue
        candidate = posixpath.join(directory, command)
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return resolver(candidate), tuple(searched)
    return None, tuple(searched)


def interpreter_chain(entrypoint: str, plugin_path: str, resolver: Resolver | None = None) -> tuple[InterpreterLink, ...]:
    """The programs the kernel runs to execute ``entrypoint`` (a resolved path), in order:
    ``#!`` interpreters (nested), with ``env`` followed to the command it looks up."""
    resolver = resolver or Resolver()
    out: list[InterpreterLink] = []
    current = entrypoint
    for _ in range(MAX_NESTING + 1):
        bang = parse_shebang(_head(current))
        if bang is None:
            return tuple(out)
        via = f"the #! line of {current}"
        if not bang.interpreter.startswith("/"):
            out.append(InterpreterLink(bang.interpreter, via, None,
                                       problem=f"the interpreter {bang.interpreter or '(none)'} is not an absolute path"))
            return tuple(out)
        res = resolver(bang.interpreter)
        out.append(InterpreterLink(bang.interpreter, via, res))
        if res.real is None:
            return tuple(out)
        if is_env(res.real) or is_env(bang.interpreter):
            call = env_call(bang.argument, plugin_path)
            env_via = f"env's lookup from {via}"
            if call.error or call.command is None:
                out.append(InterpreterLink("env", env_via, None, problem=call.error))
                return tuple(out)
            if "/" in call.command:
                if not call.command.startswith("/"):
                    out.append(InterpreterLink(call.command, env_via, None,
                                               problem=f"env runs {call.command}, a path relative to the working directory"))
                    return tuple(out)
                found: Resolution | None = resolver(call.command)
                searched: tuple[Resolution, ...] = ()
            else:
                found, searched = _lookup(call.command, call.path or plugin_path, resolver)
            out.append(InterpreterLink(call.command, env_via, found, searched,
                                       "" if found is not None else f"{call.command} is not on PATH {call.path or plugin_path}"))
            if found is None or found.real is None:
                return tuple(out)
            current = found.real
        else:
            current = res.real
    out.append(InterpreterLink(current, f"the #! line of {current}", None,
                               problem=f"interpreters nest more than {MAX_NESTING} deep"))
    return tuple(out)


def chain_files(chain: tuple[InterpreterLink, ...]) -> tuple[str, ...]:
    """The files of the chain, resolved, in order (what the lock records)."""
    return tuple(link.real for link in chain if link.real is not None)
