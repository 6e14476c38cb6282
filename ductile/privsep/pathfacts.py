"""The edge that gathers the facts ``trust`` judges: every entry the kernel walks through to
reach a path, following symlinks the way ``execve`` and ``open`` would, each one ``lstat``-ed.

``realpath`` would hide the steps that matter: ``/opt/plugins -> /srv/p`` is safe only if
``/opt`` (which holds the link) *and* ``/srv`` (which holds the target) are; this walk
records both. Nothing here decides anything.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass

from ductile.privsep.trust import Node, Step

MAX_LINKS = 40  # the kernel's own limit (ELOOP)


@dataclass(frozen=True)
class Resolution:
    path: str                    # as asked
    steps: tuple[Step, ...]      # every entry walked through, in order, "/" first
    real: str | None             # where it ends up; None when it does not resolve
    missing: str | None = None   # the first component that does not exist (its parent: steps[-1])
    error: str = ""              # why it does not resolve, other than a missing component


def lnode(path: str, dir_fd: int | None = None, name: str | None = None) -> Node | None:
    try:
        st = os.lstat(name if dir_fd is not None and name is not None else path, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    return Node(path, st.st_mode, st.st_uid, st.st_gid)


def resolve(path: str) -> Resolution:
    """Walk ``path`` (absolute) from ``/`` component by component, following symlinks."""
    if not posixpath.isabs(path):
        return Resolution(path, (), None, error="not an absolute path")
    try:
        root = lnode("/")
    except OSError as err:
        return Resolution(path, (), None, error=err.strerror or "cannot stat /")
    assert root is not None
    steps: list[Step] = [Step(None, root)]
    current = root                     # the directory we are in (a real directory)
    pending = [c for c in path.split("/") if c]
    pending.reverse()                  # a stack: next component last
    links = 0
    while pending:
        name = pending.pop()
        if name == ".":
            continue
        if name == "..":
            parent = posixpath.dirname(current.path)
            node = lnode(parent)
            if node is None:
                return Resolution(path, tuple(steps), None, error=f"{parent} vanished")
            current = node
            continue
        child_path = posixpath.join(current.path, name)
        try:
            node = lnode(child_path)
        except OSError as err:
            return Resolution(path, tuple(steps), None, error=f"cannot look at {child_path}: {err.strerror}")
        if node is None:
            return Resolution(path, tuple(steps), None, missing=child_path)
        steps.append(Step(current, node))
        if node.is_symlink:
            links += 1
            if links > MAX_LINKS:
                return Resolution(path, tuple(steps), None, error="too many levels of symbolic links")
            try:
                target = os.readlink(child_path)
            except OSError as err:
                return Resolution(path, tuple(steps), None, error=f"cannot read link {child_path}: {err.strerror}")
            parts = [c for c in target.split("/") if c]
            pending.extend(reversed(parts))
            if target.startswith("/"):
                current = root
            continue
        if pending and not node.is_dir:
            return Resolution(path, tuple(steps), None, error=f"{child_path} is not a directory")
        current = node
    return Resolution(path, tuple(steps), current.path)
