"""The OS edge for filesystem reconciliation: take snapshots, apply a plan. Nothing here
decides anything; ``reconcile.plan_reconcile`` does."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from ductile.errors import BootRefused
from ductile.privsep.reconcile import Action, Plan, Snapshot


def snapshot(path: str) -> Snapshot:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return Snapshot(path, False)
    except OSError:
        # cannot even look (EACCES on a parent): present, owner unknown -> the planner refuses
        return Snapshot(path, True, uid=-1, gid=-1)
    is_link = stat.S_ISLNK(st.st_mode)
    is_dir = stat.S_ISDIR(st.st_mode)
    if is_link:
        try:
            is_dir = stat.S_ISDIR(os.stat(path).st_mode)
        except OSError:
            is_dir = False
    return Snapshot(path, True, is_dir, is_link, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)


def snapshots(paths: Iterable[str]) -> dict[str, Snapshot]:
    return {p: snapshot(p) for p in paths}


def apply_action(action: Action) -> None:
    if action.op == "mkdir":
        assert action.mode is not None
        os.mkdir(action.path, action.mode)
        os.chmod(action.path, action.mode)  # umask-independent
    elif action.op == "chmod":
        assert action.mode is not None
        fd = os.open(action.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_DIRECTORY if os.path.isdir(action.path) else 0))
        try:
            os.fchmod(fd, action.mode)
        finally:
            os.close(fd)
    elif action.op == "chown":
        assert action.uid is not None and action.gid is not None
        os.chown(action.path, action.uid, action.gid, follow_symlinks=False)


def apply_plan(plan: Plan) -> list[Action]:
    """All-or-refuse: nothing is touched unless the plan has no refusal."""
    if not plan.ok:
        first = plan.refusals[0]
        raise BootRefused(first.message, where=first.path, fix=first.fix)
    done = []
    for action in plan.actions:
        try:
            apply_action(action)
        except OSError as err:
            raise BootRefused(f"could not {action.describe()}: {err.strerror}", where=action.path,
                              fix="fix it by hand as root, then start again") from None
        done.append(action)
    return done
