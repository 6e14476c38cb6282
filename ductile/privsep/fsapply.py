"""The OS edge for filesystem reconciliation: take ``lstat`` facts, carry out a plan through
file descriptors. Nothing here decides what to change; ``reconcile.plan_reconcile`` does.

The plan was made from facts that may be stale by the time it runs, and a path is a
promise the filesystem need not keep (a component can become a symlink between the look
and the act). So every action walks its path again from ``/`` with
``openat(O_PATH|O_NOFOLLOW|O_DIRECTORY)``, re-judges every step with the planner's own rule
(``trust.step_problems``) on the descriptor it holds, and acts on that descriptor
(``mkdirat``; chmod and chown through ``/proc/self/fd/N``, which names exactly the inode
the descriptor holds) — never on a path. ``O_PATH`` because a cap-only gateway may
traverse but not read the 0711 directories on the way. chown is refused for any directory
this walk did not create itself.

A change to an account's own directory that the gateway cannot make (a cap-only gateway
has neither CAP_CHOWN nor CAP_FOWNER) is made by a helper dropped to that account, passed
in by the caller: the runtime layer owns spawning, this module only asks for it.

Every applied change comes back as an ``Applied`` (path, before, after) for the log and
the ledger. A failure refuses the account it served, or the whole boot for the gateway's
own surface.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ductile.errors import BootRefused
from ductile.privsep.reconcile import Action, Plan, Refusal, describe_node
from ductile.privsep.trust import Node, Owners, Step, creatable_by_others, parent_problem, step_problems

DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
ANY_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC

AsAccount = Callable[[Action], None]


def snapshot(path: str) -> Node | None:
    """``lstat`` of ``path``; None when it does not exist. A path that cannot even be looked
    at (EACCES on a parent) is reported as an unknown, foreign-owned entry: the planner refuses it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError:
        return Node(path, 0, -1, -1)
    return Node(path, st.st_mode, st.st_uid, st.st_gid)


def snapshots(paths: Iterable[str]) -> dict[str, Node]:
    out = {}
    for p in paths:
        node = snapshot(p)
        if node is not None:
            out[p] = node
    return out


@dataclass(frozen=True)
class Applied:
    action: Action
    before: str
    after: str

    def line(self) -> str:
        who = f" (as account {self.action.scope})" if self.action.by == "account" else ""
        return f"reconcile: {self.action.op} {self.action.path}{who}: {self.before} -> {self.after} ({self.action.reason})"

    def as_dict(self) -> dict[str, str | None]:
        return {"op": self.action.op, "path": self.action.path, "before": self.before, "after": self.after,
                "reason": self.action.reason, "account": self.action.scope, "by": self.action.by}


@dataclass
class ApplyResult:
    applied: list[Applied] = field(default_factory=list)
    refused: dict[str, Refusal] = field(default_factory=dict)  # account name -> why it cannot run


class _Refused(Exception):
    def __init__(self, path: str, rule: str, message: str, fix: str) -> None:
        super().__init__(message)
        self.path, self.rule, self.message, self.fix = path, rule, message, fix


def _fnode(path: str, fd: int) -> Node:
    st = os.fstat(fd)
    return Node(path, st.st_mode, st.st_uid, st.st_gid)


def _by_fd(fd: int) -> str:
    """The path that names exactly the inode ``fd`` holds (works for ``O_PATH`` descriptors,
    which ``fchmod``/``fchown`` do not accept)."""
    return f"/proc/self/fd/{fd}"


def _fchmod(fd: int, mode: int) -> None:
    os.chmod(_by_fd(fd), mode)


def _fchown(fd: int, uid: int, gid: int) -> None:
    os.chown(_by_fd(fd), uid, gid)


def _components(path: str) -> list[str]:
    return [c for c in posixpath.normpath(path).split("/") if c]


def open_dir(path: str, owners: Owners, *, account_dir: bool = False) -> tuple[int, Node]:
    """A descriptor of directory ``path``, reached from ``/`` one component at a time without
    following a symlink, each step judged by the planner's rule. ``account_dir``: the last
    component is an account's own directory (owned by the account, by design)."""
    fd = os.open("/", DIR_FLAGS)
    node = _fnode("/", fd)
    names = _components(path)
    try:
        current = "/"
        for i, name in enumerate(names):
            current = posixpath.join(current, name)
            try:
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
            except OSError as err:
                raise _Refused(current, "walk", f"cannot walk through {current}: {err.strerror} "
                               "(a symlink or a non-directory is never followed)",
                               "point the configured path at real directories only") from None
            child_node = _fnode(current, child)
            last = i == len(names) - 1
            problems = ([p for p in [parent_problem(node, child_node, owners)] if p] if last and account_dir
                        else step_problems(Step(node, child_node), owners))
            if problems:
                os.close(child)
                p = problems[0]
                raise _Refused(p.path, p.rule, p.message, p.fix)
            os.close(fd)
            fd, node = child, child_node
        return fd, node
    except BaseException:
        os.close(fd)
        raise


class _Walker:
    def __init__(self, owners: Owners, as_account: AsAccount | None) -> None:
        self.owners = owners
        self.as_account = as_account
        self.created: set[tuple[int, int]] = set()
        self.euid = os.geteuid()

    def apply(self, action: Action) -> Applied:
        if action.by == "account":
            return self.chmod_as_account(action)
        if action.op == "mkdir":
            return self.mkdir(action)
        if action.op == "chown":
            return self.chown(action)
        return self.chmod(action)

    def mkdir(self, action: Action) -> Applied:
        assert action.mode is not None
        parent_path, name = posixpath.split(posixpath.normpath(action.path))
        pfd, parent = open_dir(parent_path, self.owners)
        try:
            why = creatable_by_others(parent, self.owners)
            if why:
                raise _Refused(action.path, "missing-under-writable", f"will not create {action.path}: {why}",
                               f"create it yourself as root (install -d -m 0711 {action.path})")
            os.mkdir(name, 0o700, dir_fd=pfd)  # never wider than planned while it is being set up
            fd = os.open(name, DIR_FLAGS, dir_fd=pfd)
        finally:
            os.close(pfd)
        try:
            st = os.fstat(fd)
            if st.st_uid != self.euid:
                raise _Refused(action.path, "walk", f"{action.path} changed hands while it was being created",
                               "find out who else writes there")
            self.created.add((st.st_dev, st.st_ino))
            _fchmod(fd, action.mode)
            return Applied(action, "absent", describe_node(_fnode(action.path, fd)))
        finally:
            os.close(fd)

    def chown(self, action: Action) -> Applied:
        assert action.uid is not None and action.gid is not None
        fd, node = open_dir(action.path, self.owners)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) not in self.created:
                raise _Refused(action.path, "chown-not-created",
                               f"will not chown {action.path}: this walk did not create it",
                               f"choose a new path, or chown {action.uid}:{action.gid} {action.path} yourself")
            _fchown(fd, action.uid, action.gid)
            return Applied(action, describe_node(node), describe_node(_fnode(action.path, fd)))
        finally:
            os.close(fd)

    def chmod(self, action: Action) -> Applied:
        assert action.mode is not None
        parent_path, name = posixpath.split(posixpath.normpath(action.path))
        account_dir = action.scope is not None
        if account_dir:
            fd, node = open_dir(action.path, self.owners, account_dir=True)
        else:
            pfd, parent = open_dir(parent_path, self.owners)
            try:
                fd = os.open(name, ANY_FLAGS, dir_fd=pfd)
            except OSError as err:
                raise _Refused(action.path, "walk", f"cannot open {action.path}: {err.strerror}",
                               "replace it with a regular file or directory") from None
            finally:
                os.close(pfd)
            node = _fnode(action.path, fd)
            problem = parent_problem(parent, node, self.owners)
            if problem:
                os.close(fd)
                raise _Refused(problem.path, problem.rule, problem.message, problem.fix)
        try:
            if node.uid != action.expect_uid:
                raise _Refused(action.path, "owner-changed",
                               f"{action.path} is owned by uid {node.uid} now, not uid {action.expect_uid} as planned",
                               "run `ductile doctor` to see the current plan")
            if node.is_symlink or not (node.is_dir or node.is_regular):
                raise _Refused(action.path, "walk", f"{action.path} is not a regular file or directory now",
                               "replace it with the real file or directory")
            _fchmod(fd, action.mode)
            return Applied(action, describe_node(node), describe_node(_fnode(action.path, fd)))
        finally:
            os.close(fd)

    def chmod_as_account(self, action: Action) -> Applied:
        """Walk to the account's directory (judging every step), let the account fix its own
        mode, then look again through a fresh descriptor."""
        assert action.mode is not None
        fd, before = open_dir(action.path, self.owners, account_dir=True)
        os.close(fd)
        if before.uid != action.expect_uid:
            raise _Refused(action.path, "owner-changed", f"{action.path} is owned by uid {before.uid}, not the account",
                           "run `ductile doctor` to see the current plan")
        if self.as_account is None:
            raise _Refused(action.path, "no-helper", f"cannot chmod {action.path} as its account here",
                           f"chmod {action.mode:04o} {action.path} as root or as the account")
        try:
            self.as_account(action)
        except Exception as err:  # the helper's own failure, whatever it was
            raise _Refused(action.path, "helper-failed", f"the helper dropped to account {action.scope} could not "
                           f"chmod {action.path}: {err}",
                           f"chmod {action.mode:04o} {action.path} as root or as the account") from None
        fd, after = open_dir(action.path, self.owners, account_dir=True)
        os.close(fd)
        if after.perms != action.mode:
            raise _Refused(action.path, "helper-failed", f"{action.path} is still mode {after.perms:04o} after the "
                           f"helper ran as account {action.scope}",
                           f"chmod {action.mode:04o} {action.path} as root or as the account")
        return Applied(action, describe_node(before), describe_node(after))


def apply_plan(plan: Plan, owners: Owners, *, as_account: AsAccount | None = None) -> ApplyResult:
    """Refuse the boot on any refusal of the gateway's own surface (nothing is touched then);
    otherwise carry out every action of every account that is not refused. A failing action
    refuses its account (or, for the gateway's surface, the boot)."""
    blocking = plan.blocking
    if blocking:
        first = blocking[0]
        more = f" (and {len(blocking) - 1} more; `ductile doctor` lists them)" if len(blocking) > 1 else ""
        raise BootRefused(first.message + more, where=first.path, fix=first.fix)
    result = ApplyResult(refused=dict(plan.refused_accounts()))
    walker = _Walker(owners, as_account)
    for action in plan.runnable():
        if action.scope is not None and action.scope in result.refused:
            continue
        try:
            result.applied.append(walker.apply(action))
        except (_Refused, OSError) as err:
            if isinstance(err, _Refused):
                refusal = Refusal(err.path, err.rule, err.message, err.fix, action.scope)
            else:
                refusal = Refusal(action.path, "apply", f"could not {action.describe()}: {err.strerror}",
                                  "fix it by hand as root, then start again", action.scope)
            if action.scope is None:
                raise BootRefused(refusal.message, where=refusal.path, fix=refusal.fix) from None
            result.refused[action.scope] = refusal
    return result
