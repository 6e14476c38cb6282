"""The filesystem reconcile planner: tables for each rule, hypothesis for its promises
(a plan never widens a secret's mode and never hands a secret to an account)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ductile.privsep.reconcile import AccountDir, SecretPath, Snapshot, plan_reconcile

GW = 984
CFG = SecretPath("/etc/ductile", "config directory", True)
DB = SecretPath("/var/lib/ductile/ductile.db", "state database", False)
KEY = SecretPath("/etc/ductile/secret/age.key", "age key", False)
A = AccountDir("default", 61001, 61001, "/var/lib/ductile/accounts/default")

GOOD = {
    "/": Snapshot("/", True, True, False, 0o755, 0, 0),
    "/var": Snapshot("/var", True, True, False, 0o755, 0, 0),
    "/var/lib": Snapshot("/var/lib", True, True, False, 0o755, 0, 0),
    "/var/lib/ductile": Snapshot("/var/lib/ductile", True, True, False, 0o711, GW, GW),
    "/var/lib/ductile/accounts": Snapshot("/var/lib/ductile/accounts", True, True, False, 0o711, GW, GW),
    A.state_dir: Snapshot(A.state_dir, True, True, False, 0o700, 61001, 61001),
    CFG.path: Snapshot(CFG.path, True, True, False, 0o700, GW, GW),
    DB.path: Snapshot(DB.path, True, False, False, 0o600, GW, GW),
    KEY.path: Snapshot(KEY.path, True, False, False, 0o600, GW, GW),
}


def plan(snaps: dict[str, Snapshot] | None = None, *, can_chown: bool = False, surface=(CFG, DB, KEY),
         accounts=(A,), must_reach=()):  # type: ignore[no-untyped-def]
    s = dict(GOOD)
    s.update(snaps or {})
    return plan_reconcile(surface, accounts, s, gateway_uid=GW, can_chown=can_chown, must_reach=must_reach)


def snap(path: str, mode: int, uid: int = GW, gid: int = GW, is_dir: bool = False, **kw) -> dict[str, Snapshot]:  # type: ignore[no-untyped-def]
    return {path: Snapshot(path, True, is_dir, kw.get("link", False), mode, uid, gid)}


def test_a_provisioned_host_needs_nothing() -> None:
    p = plan()
    assert p.ok and p.actions == ()


def test_loose_secrets_are_tightened_never_widened() -> None:
    p = plan({**snap(CFG.path, 0o755, is_dir=True), **snap(DB.path, 0o644), **snap(KEY.path, 0o440)})
    assert p.ok
    assert {(a.path, a.mode) for a in p.actions} == {(CFG.path, 0o700), (DB.path, 0o600), (KEY.path, 0o400)}


def test_missing_secrets_are_skipped() -> None:
    s = dict(GOOD)
    del s[DB.path]
    assert plan_reconcile((CFG, DB, KEY), (A,), s, gateway_uid=GW, can_chown=False).ok


def test_foreign_owned_secret_is_refused() -> None:
    p = plan(snap(KEY.path, 0o600, uid=0))
    assert [r.rule for r in p.refusals] == ["secret-owner"]
    assert "chown 984" in p.refusals[0].fix


def test_symlinked_or_mistyped_secret_is_refused() -> None:
    assert [r.rule for r in plan(snap(KEY.path, 0o777, link=True)).refusals] == ["secret-symlink"]
    assert [r.rule for r in plan(snap(KEY.path, 0o700, is_dir=True)).refusals] == ["secret-type"]


def test_cap_only_gateway_verifies_account_dirs() -> None:
    s = dict(GOOD)
    del s[A.state_dir]
    p = plan_reconcile((CFG,), (A,), s, gateway_uid=GW, can_chown=False)
    assert [r.rule for r in p.refusals] == ["account-dir-missing"] and "install -d -m 0700 -o 61001" in p.refusals[0].fix
    for bad, rule in [(snap(A.state_dir, 0o750, 61001, 61001, True), "account-dir-mode"),
                      (snap(A.state_dir, 0o700, 61002, 61001, True), "account-dir-owner"),
                      (snap(A.state_dir, 0o700, 61001, 61001, False), "account-dir-type"),
                      (snap(A.state_dir, 0o700, 61001, 61001, True, link=True), "account-dir-type")]:
        assert [r.rule for r in plan(bad).refusals] == [rule]


def test_root_gateway_creates_and_fixes_account_dirs() -> None:
    s = dict(GOOD)
    del s[A.state_dir]
    del s["/var/lib/ductile/accounts"]
    p = plan_reconcile((), (A,), s, gateway_uid=0, can_chown=True)
    assert p.ok
    assert [(a.op, a.path) for a in p.actions] == [("mkdir", "/var/lib/ductile/accounts"), ("mkdir", A.state_dir),
                                                   ("chown", A.state_dir)]
    fixed = plan(snap(A.state_dir, 0o755, GW, GW, True), can_chown=True)
    assert fixed.ok and [a.op for a in fixed.actions] == ["chown", "chmod"]


def test_root_never_takes_over_a_dir_owned_by_someone_else() -> None:
    p = plan_reconcile((), (A,), {**GOOD, **snap(A.state_dir, 0o700, 1000, 1000, True)}, gateway_uid=0, can_chown=True)
    assert [r.rule for r in p.refusals] == ["account-dir-owner"]


def test_parents_must_be_traversable_and_not_writable() -> None:
    assert [r.rule for r in plan(snap("/var/lib/ductile", 0o700, is_dir=True)).refusals] == ["account-parent-traversal"]
    assert [r.rule for r in plan(snap("/var/lib/ductile", 0o777, is_dir=True)).refusals] == ["account-parent-writable"]
    assert plan(snap("/var/lib/ductile", 0o1777, is_dir=True)).ok  # sticky like /tmp


def test_account_dir_inside_the_secret_surface_is_refused() -> None:
    inside = AccountDir("x", 61005, 61005, "/etc/ductile/accounts/x")
    p = plan(accounts=(inside,))
    assert "account-dir-inside-secret" in [r.rule for r in p.refusals]


def test_secret_inside_an_account_dir_is_refused() -> None:
    leaky = SecretPath(A.state_dir + "/vault.age", "vault", False)
    assert [r.rule for r in plan(surface=(leaky,)).refusals] == ["secret-inside-account-dir"]


def test_plugin_root_inside_config_dir_is_refused() -> None:
    p = plan(must_reach=[("plugin_roots[0]", "/etc/ductile/plugins")])
    assert [r.rule for r in p.refusals] == ["reachable-inside-secret"]


# ---- properties --------------------------------------------------------------------------

paths = st.sampled_from([CFG.path, DB.path, KEY.path, A.state_dir, "/var/lib/ductile", "/var/lib/ductile/accounts"])
snapshots = st.builds(lambda path, exists, is_dir, link, mode, uid, gid: Snapshot(path, exists, is_dir, link, mode, uid, gid),
                      paths, st.booleans(), st.booleans(), st.booleans(), st.integers(0, 0o7777),
                      st.sampled_from([0, GW, 61001, 61002, 1000]), st.sampled_from([0, GW, 61001, 61002]))


@given(st.lists(snapshots, max_size=8), st.booleans())
def test_plans_never_widen_secrets_or_give_them_to_accounts(changes: list[Snapshot], can_chown: bool) -> None:
    s = dict(GOOD)
    for c in changes:
        s[c.path] = c
    p = plan_reconcile((CFG, DB, KEY), (A,), s, gateway_uid=GW, can_chown=can_chown)
    secrets = {CFG.path, DB.path, KEY.path}
    for a in p.actions:
        if a.path in secrets:
            assert a.op == "chmod"
            assert a.mode is not None and a.mode & ~s[a.path].mode == 0, "widened a secret"
            assert a.mode & 0o077 == 0
        if a.op == "chown":
            assert a.path == A.state_dir and (a.uid, a.gid) == (A.uid, A.gid)
        if not can_chown:
            assert a.op == "chmod" and a.path in secrets, "a cap-only gateway can only tighten its own files"
