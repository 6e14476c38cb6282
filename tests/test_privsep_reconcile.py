"""The filesystem reconcile planner: tables for each rule (the attacks of #10 among them),
hypothesis for its promises (a plan never widens a secret's mode, never hands a secret to
an account, never chowns what it did not create)."""

from __future__ import annotations

import stat

from hypothesis import given
from hypothesis import strategies as st

from ductile.privsep.reconcile import AccountDir, SecretPath, plan_reconcile
from ductile.privsep.trust import Node

GW = 984
CFG = SecretPath("/etc/ductile", "config directory", True)
DB = SecretPath("/var/lib/ductile/ductile.db", "state database", False)
KEYDIR = SecretPath("/etc/ductile/secret", "age key directory", True)
KEY = SecretPath("/etc/ductile/secret/age.key", "age key", False)
A = AccountDir("default", 61001, 61001, "/var/lib/ductile/accounts/default")
B = AccountDir("ops", 61002, 61002, "/var/lib/ductile/accounts/ops")
DIR, REG, LNK = stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK


def d(path: str, mode: int = 0o755, uid: int = 0, gid: int | None = None) -> dict[str, Node]:
    return {path: Node(path, DIR | mode, uid, uid if gid is None else gid)}


def f(path: str, mode: int = 0o600, uid: int = GW) -> dict[str, Node]:
    return {path: Node(path, REG | mode, uid, uid)}


def link(path: str) -> dict[str, Node]:
    return {path: Node(path, LNK | 0o777, 0, 0)}


GOOD: dict[str, Node] = {
    **d("/"), **d("/etc"), **d("/var"), **d("/var/lib"), **d("/tmp", 0o1777),
    **d("/var/lib/ductile", 0o711, GW), **d("/var/lib/ductile/accounts", 0o711, GW),
    **d(A.state_dir, 0o700, A.uid), **d(B.state_dir, 0o700, B.uid),
    **d(CFG.path, 0o700, GW), **d(KEYDIR.path, 0o700, GW), **f(DB.path), **f(KEY.path),
}


def plan(nodes: dict[str, Node] | None = None, *, can_chown: bool = False, surface=(CFG, DB, KEYDIR, KEY),
         accounts=(A,), must_reach=(), drop=()):  # type: ignore[no-untyped-def]
    s = {**GOOD, **(nodes or {})}
    for path in drop:
        s.pop(path, None)
    return plan_reconcile(surface, accounts, s, gateway_uid=GW, can_chown=can_chown, must_reach=must_reach)


def rules(p) -> list[tuple[str, str | None]]:  # type: ignore[no-untyped-def]
    return [(r.rule, r.scope) for r in p.refusals]


def test_a_provisioned_host_needs_nothing() -> None:
    p = plan()
    assert p.ok and p.actions == ()


def test_loose_config_and_db_are_tightened_never_widened() -> None:
    p = plan({**d(CFG.path, 0o755, GW), **f(DB.path, 0o644), **d(KEYDIR.path, 0o750, GW)})
    assert p.ok
    assert {(a.path, a.mode) for a in p.actions} == {(CFG.path, 0o700), (DB.path, 0o600), (KEYDIR.path, 0o700)}
    assert all(a.by == "gateway" and a.scope is None and a.before for a in p.actions)


def test_an_exposed_key_is_a_refusal_that_says_rotate_never_a_chmod() -> None:
    for node, why in [(f(KEY.path, 0o644), "mode 0644"), (f(KEY.path, 0o640), "mode 0640"),
                      (f(KEY.path, 0o602), "mode 0602"), (f(KEY.path, 0o600, uid=0), "owned by uid 0")]:
        p = plan(node)
        assert rules(p) == [("key-exposed", None)], node
        r = p.refusals[0]
        assert why in r.message and "may have been read" in r.message
        assert "ductile vault rotate-key" in r.fix and "chmod 0600" in r.fix
        assert all(a.path != KEY.path for a in p.actions)


def test_missing_secrets_are_skipped() -> None:
    assert plan(drop=[DB.path]).ok


def test_foreign_owned_secret_is_refused() -> None:
    p = plan(f(DB.path, 0o600, uid=0))
    assert rules(p) == [("secret-owner", None)]
    assert "chown 984" in p.refusals[0].fix


def test_symlinked_or_mistyped_secret_is_refused() -> None:
    assert rules(plan(link(DB.path))) == [("secret-symlink", None)]
    assert rules(plan(d(DB.path, 0o700, GW))) == [("secret-type", None)]


def test_secret_under_a_symlinked_or_account_owned_ancestor_is_refused() -> None:
    assert rules(plan(link("/etc"))) == [("ancestor-symlink", None)] * 3
    assert rules(plan(d("/var/lib/ductile", 0o711, A.uid))) == [("ancestor-owned-by-account", None),
                                                                 ("ancestor-owned-by-account", "default")]


def test_cap_only_gateway_verifies_account_dirs() -> None:
    p = plan(drop=[A.state_dir])
    assert rules(p) == [("account-dir-missing", "default")] and "install -d -m 0700 -o 61001" in p.refusals[0].fix
    for bad, rule in [(d(A.state_dir, 0o700, 61002, 61001), "account-dir-owner"),
                      (f(A.state_dir, 0o700, 61001), "account-dir-type"),
                      (link(A.state_dir), "account-dir-type")]:
        assert rules(plan(bad)) == [(rule, "default")]


def test_a_loosened_state_dir_is_repaired_by_the_gateway_as_root_and_by_the_account_when_cap_only() -> None:
    loose = d(A.state_dir, 0o755, A.uid)
    capped = plan(loose)
    assert capped.ok and [(a.op, a.by, a.mode, a.scope, a.expect_uid) for a in capped.actions] == \
        [("chmod", "account", 0o700, "default", A.uid)]
    assert "as account default" in capped.actions[0].describe()
    rooted = plan(loose, can_chown=True)
    assert rooted.ok and [(a.op, a.by) for a in rooted.actions] == [("chmod", "gateway")]


def test_root_gateway_creates_account_dirs_and_chowns_only_those() -> None:
    p = plan(drop=[A.state_dir, "/var/lib/ductile/accounts"], can_chown=True, surface=())
    assert p.ok
    assert [(a.op, a.path) for a in p.actions] == [("mkdir", "/var/lib/ductile/accounts"), ("mkdir", A.state_dir),
                                                   ("chown", A.state_dir)]


def test_one_parent_shared_by_two_accounts_is_made_once() -> None:
    p = plan(drop=[A.state_dir, B.state_dir, "/var/lib/ductile/accounts"], can_chown=True, surface=(), accounts=(A, B))
    assert [(a.op, a.path) for a in p.runnable()] == [
        ("mkdir", "/var/lib/ductile/accounts"), ("mkdir", A.state_dir), ("chown", A.state_dir),
        ("mkdir", B.state_dir), ("chown", B.state_dir)]


def test_an_existing_directory_is_never_taken_over_not_even_roots() -> None:
    for owner, who in [(0, "root"), (GW, "the gateway"), (1000, "uid 1000")]:
        p = plan(d(A.state_dir, 0o700, owner), can_chown=True)
        assert rules(p) == [("account-dir-owner", "default")]
        assert f"belongs to {who}" in p.refusals[0].fix and "choose a new path" in p.refusals[0].fix
        assert p.actions == ()


def test_a_typo_naming_a_system_directory_is_refused_not_chowned() -> None:
    typo = AccountDir("default", 61001, 61001, "/etc/default")
    p = plan(d("/etc/default"), can_chown=True, accounts=(typo,))
    assert rules(p) == [("account-dir-owner", "default")] and "belongs to root" in p.refusals[0].fix
    assert not [a for a in p.actions if a.path == "/etc/default"]


def test_sticky_tmp_attack_a_planted_symlink_is_refused() -> None:
    """#10 attack 1: state_dir under /tmp, a component missing, another account plants a
    symlink to a root-owned directory there."""
    victim = AccountDir("default", 61001, 61001, "/tmp/dt/acct")
    planted = {**link("/tmp/dt")}
    p = plan(planted, can_chown=True, accounts=(victim,), surface=())
    assert rules(p) == [("ancestor-symlink", "default")] and p.actions == ()
    # the same component planted as a directory by an account: refused too
    p = plan(d("/tmp/dt", 0o755, B.uid), can_chown=True, accounts=(victim, B), surface=())
    assert rules(p) == [("ancestor-owned-by-account", "default")]
    assert [a.scope for a in p.runnable()] == []


def test_a_missing_component_under_a_writable_directory_is_refused_even_for_root() -> None:
    victim = AccountDir("default", 61001, 61001, "/tmp/dt/acct")
    p = plan(can_chown=True, accounts=(victim,), surface=())
    assert rules(p) == [("missing-under-writable", "default")]
    assert "install -d -m 0711 /tmp/dt" in p.refusals[0].fix and p.actions == ()


def test_root_owned_entries_under_sticky_tmp_stay_usable() -> None:
    world = AccountDir("default", 61001, 61001, "/tmp/ductile-wall-x/accounts/default")
    nodes = {**d("/tmp/ductile-wall-x", 0o711), **d("/tmp/ductile-wall-x/accounts", 0o711),
             **d(world.state_dir, 0o700, world.uid)}
    assert plan(nodes, accounts=(world,), surface=()).ok
    assert plan(nodes, accounts=(world,), surface=(), can_chown=True).ok


def test_parents_must_be_traversable_and_not_writable() -> None:
    assert rules(plan(d("/var/lib/ductile", 0o700, GW))) == [("account-parent-traversal", "default")]
    assert rules(plan(d("/var/lib/ductile/accounts", 0o777, GW))) == [("account-dir-replaceable", "default")]
    # sticky does not help: the state_dir below belongs to the account, not to root
    assert rules(plan(d("/var/lib/ductile/accounts", 0o1777, GW))) == [("account-dir-replaceable", "default")]


def test_one_accounts_problem_refuses_that_account_only() -> None:
    p = plan({**d(A.state_dir, 0o700, 0), **d(B.state_dir, 0o755, B.uid)}, accounts=(A, B), can_chown=True)
    assert rules(p) == [("account-dir-owner", "default")]
    assert p.blocking == () and list(p.refused_accounts()) == ["default"]
    assert [(a.path, a.scope) for a in p.runnable()] == [(B.state_dir, "ops")]


def test_account_dir_inside_the_secret_surface_is_refused() -> None:
    inside = AccountDir("x", 61005, 61005, "/etc/ductile/accounts/x")
    p = plan(accounts=(inside,))
    assert ("account-dir-inside-secret", "x") in rules(p)


def test_secret_inside_an_account_dir_is_refused() -> None:
    leaky = SecretPath(A.state_dir + "/vault.age", "vault", False)
    assert rules(plan(surface=(leaky,))) == [("secret-inside-account-dir", None)]


def test_plugin_root_inside_config_dir_is_refused() -> None:
    p = plan(must_reach=[("plugin_roots[0]", "/etc/ductile/plugins")])
    assert rules(p) == [("reachable-inside-secret", None)]


# ---- properties --------------------------------------------------------------------------

PATHS = [CFG.path, DB.path, KEY.path, A.state_dir, "/var/lib/ductile", "/var/lib/ductile/accounts", "/var/lib"]
nodes = st.builds(lambda path, kind, mode, uid, gid: Node(path, kind | mode, uid, gid),
                  st.sampled_from(PATHS), st.sampled_from([DIR, REG, LNK]), st.integers(0, 0o7777),
                  st.sampled_from([0, GW, 61001, 61002, 1000]), st.sampled_from([0, GW, 61001, 61002]))


@given(st.lists(nodes, max_size=8), st.lists(st.sampled_from(PATHS), max_size=3), st.booleans())
def test_plans_never_widen_secrets_never_give_them_away_never_chown_what_exists(
        changes: list[Node], missing: list[str], can_chown: bool) -> None:
    s = dict(GOOD)
    for c in changes:
        s[c.path] = c
    for m in missing:  # a missing directory takes everything below it along
        s = {k: v for k, v in s.items() if not (k == m or k.startswith(m + "/"))}
    p = plan_reconcile((CFG, DB, KEY), (A,), s, gateway_uid=GW, can_chown=can_chown)
    secrets = {CFG.path, DB.path, KEY.path}
    made = {a.path for a in p.actions if a.op == "mkdir"}
    for a in p.actions:
        assert a.path != KEY.path, "the age key is never chmodded: an exposed key is refused"
        if a.path in secrets:
            assert a.op == "chmod"
            assert a.mode is not None and a.mode & ~s[a.path].perms == 0, "widened a secret"
            assert a.mode & 0o077 == 0
        if a.op == "chown":
            assert a.path == A.state_dir and (a.uid, a.gid) == (A.uid, A.gid) and a.path in made
        if a.op == "mkdir":
            assert a.path not in s, "created something that exists"
        if not can_chown:
            assert a.op == "chmod"
            assert a.path in secrets or (a.path == A.state_dir and a.by == "account"), \
                "a cap-only gateway tightens its own files and asks the account for its own dir"
