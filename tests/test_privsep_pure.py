"""The pure privsep library, as tables: capability parsing, the boot gate, account
resolution and validation, the env allowlist, and credential building."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ductile.config.model import AccountConfig, Config, PluginConfig, ServiceConfig
from ductile.errors import AccountDropFailed, ConfigError
from ductile.privsep.accounts import ResolvedAccount, resolve_account
from ductile.privsep.caps import has_drop_capability, parse_status
from ductile.privsep.env import SET_BY_GATEWAY, ALLOWLIST, LC_NAMES, build_env
from ductile.privsep.gate import evaluate_boot_gate
from ductile.privsep.spawnspec import TRAMPOLINE, TRAMPOLINE_NAME, build_spawn_spec

ROOT_STATUS = """Name:\tpython3
Uid:\t0\t0\t0\t0
Gid:\t0\t0\t0\t0
Groups:\t0 4 27
CapInh:\t0000000000000000
CapPrm:\t000001fffeffffff
CapEff:\t000001fffeffffff
CapBnd:\t000001fffeffffff
CapAmb:\t0000000000000000
NoNewPrivs:\t0
"""


def status(eff: str, amb: str = "0000000000000000", inh: str = "0000000000000000") -> str:
    return ROOT_STATUS.replace("CapEff:\t000001fffeffffff", f"CapEff:\t{eff}").replace(
        "CapAmb:\t0000000000000000", f"CapAmb:\t{amb}").replace("CapInh:\t0000000000000000", f"CapInh:\t{inh}")


# ---- capability probe ------------------------------------------------------------------

@pytest.mark.parametrize("euid,text,expected", [
    (0, None, True),                                   # root, even unreadable
    (984, status("00000000000000c0"), True),           # setuid+setgid
    (984, status("00000000000000e0"), True),           # plus kill
    (984, status("0000000000000080"), False),          # setuid only
    (984, status("0000000000000040"), False),          # setgid only
    (984, status("0000000000000000"), False),
    (984, None, False),                                # unreadable -> no capability
    (984, "garbage", False),                           # unparsable -> no capability
    (984, status("zz"), False),
    (984, status("1" + "0" * 16), False),              # too long to be a mask
])
def test_capability_probe(euid: int, text: str | None, expected: bool) -> None:
    assert has_drop_capability(euid, text) is expected


def test_parse_status_fields() -> None:
    st_ = parse_status(ROOT_STATUS)
    assert st_.uids == (0, 0, 0, 0) and st_.groups == (0, 4, 27) and st_.no_new_privs == 0
    assert st_.cap("CapEff") == 0x1fffeffffff and not st_.unprivileged()
    dropped = parse_status(status("0", inh="0").replace("CapPrm:\t000001fffeffffff", "CapPrm:\t0"))
    assert dropped.unprivileged()
    assert not parse_status(status("0", amb="c0").replace("CapPrm:\t000001fffeffffff", "CapPrm:\t0")).unprivileged()


@given(st.text(max_size=300))
def test_probe_never_raises_on_arbitrary_text(text: str) -> None:
    assert has_drop_capability(1000, text) in (True, False)


# ---- the boot gate: every cell -----------------------------------------------------------

@pytest.mark.parametrize("cap,accounts,unconfined,posture,level,needle", [
    (True, 2, False, "enforce", "info", "enforcing"),
    (False, 0, False, "unconfined", "info", "UNCONFINED"),
    (True, 0, False, "refuse", "error", "holds the uid-drop capability but no accounts"),
    (False, 3, False, "refuse", "error", "lacks CAP_SETUID/CAP_SETGID"),
    (True, 2, True, "unconfined", "warning", "service.unconfined is true"),
    (False, 2, True, "unconfined", "warning", "service.unconfined is true"),
    (True, 0, True, "unconfined", "warning", "service.unconfined is true"),
    (False, 0, True, "unconfined", "warning", "service.unconfined is true"),
])
def test_boot_gate_truth_table(cap: bool, accounts: int, unconfined: bool, posture: str, level: str, needle: str) -> None:
    v = evaluate_boot_gate(cap, accounts, unconfined)
    assert (v.posture, v.level) == (posture, level)
    assert needle in v.message
    if v.refused:
        assert v.fix and ("service.unconfined" in v.fix)  # every refusal says how to get out


def test_refusals_name_distinct_fixes() -> None:
    a = evaluate_boot_gate(True, 0, False)
    b = evaluate_boot_gate(False, 1, False)
    assert "accounts" in a.fix and "AmbientCapabilities" in b.fix and a.cell != b.cell


# ---- account resolution ---------------------------------------------------------------

def cfg(accounts: dict[str, int] | None = None, grants: dict[str, str | None] | None = None) -> Config:
    accts = {n: AccountConfig(uid, uid, f"/var/lib/d/{n}") for n, uid in (accounts or {}).items()}
    plugins = {p: PluginConfig(run_as=g) for p, g in (grants or {}).items()}
    return Config(accounts=accts, plugins=plugins)


@pytest.mark.parametrize("accounts,grant,enforcing,name,source", [
    ({"default": 61001, "ops": 61003}, "ops", True, "ops", "granted"),
    ({"default": 61001, "ops": 61003}, None, True, "default", "default"),
    ({"ops": 61003}, None, True, None, "unconfined"),
    ({"default": 61001}, "default", True, "default", "granted"),
    ({"default": 61001, "ops": 61003}, "ops", False, None, "unconfined"),   # not enforcing
    ({}, None, True, None, "unconfined"),
])
def test_resolve_account(accounts, grant, enforcing, name, source) -> None:  # type: ignore[no-untyped-def]
    r = resolve_account(cfg(accounts, {"p": grant}), "p", enforcing)
    assert (r.name, r.source) == (name, source)
    assert r.validate() is r
    if name:
        assert r.uid == accounts[name] and r.state_dir == f"/var/lib/d/{name}"


def test_unconfigured_plugin_gets_default_and_never_consults_a_manifest() -> None:
    r = resolve_account(cfg({"default": 61001}), "not-configured", True)
    assert r.source == "default"


def test_undefined_grant_at_spawn_fails_closed() -> None:
    with pytest.raises(ConfigError, match="undefined account"):
        resolve_account(cfg({"default": 61001}, {"p": "ghost"}), "p", True)


@pytest.mark.parametrize("acct", [
    ResolvedAccount("x", 0, 61001, "/d", "granted"),
    ResolvedAccount("x", 61001, 0, "/d", "granted"),
    ResolvedAccount("x", -1, 61001, "/d", "granted"),
    ResolvedAccount("x", 2**31, 61001, "/d", "granted"),
    ResolvedAccount("x", True, 61001, "/d", "granted"),  # type: ignore[arg-type]
    ResolvedAccount("x", None, 61001, "/d", "granted"),
    ResolvedAccount("", 61001, 61001, "/d", "granted"),
    ResolvedAccount("x", 61001, 61001, "relative", "granted"),
    ResolvedAccount("x", 61001, 61001, "/", "granted"),
    ResolvedAccount("x", 61001, 61001, None, "default"),
    ResolvedAccount("x", 61001, None, None, "unconfined"),     # unconfined carrying an identity
    ResolvedAccount(None, None, None, "/d", "unconfined"),
])
def test_validate_refuses_malformed_identities(acct: ResolvedAccount) -> None:
    with pytest.raises(AccountDropFailed):
        acct.validate()


def test_validate_refuses_the_gateway_uid() -> None:
    with pytest.raises(AccountDropFailed, match="gateway's own uid"):
        ResolvedAccount("x", 984, 984, "/d", "granted").validate(gateway_uid=984)


@given(uid=st.integers(-2**40, 2**40), gid=st.integers(-2**40, 2**40))
def test_validate_never_passes_root_or_out_of_range(uid: int, gid: int) -> None:
    acct = ResolvedAccount("x", uid, gid, "/var/lib/d/x", "granted")
    ok = 0 < uid <= 2**31 - 1 and 0 < gid <= 2**31 - 1
    if ok:
        assert acct.validate() is acct
    else:
        with pytest.raises(AccountDropFailed):
            acct.validate()


# ---- env allowlist ----------------------------------------------------------------------

GATEWAY_ENV = {"PATH": "/usr/bin", "HOME": "/root", "TZ": "UTC", "LANG": "C.UTF-8", "LC_ALL": "C", "LC_FOO": "x",
               "LD_PRELOAD": "/evil.so", "DUCTILE_VAULT_KEY": "s3cret", "AWS_SECRET_ACCESS_KEY": "k", "HTTPS_PROXY": "p",
               "XDG_CACHE_HOME": "/root/.cache", "PYTHONPATH": "/x", "TMPDIR": "/tmp"}


def test_env_is_an_exact_allowlist() -> None:
    env = build_env(GATEWAY_ENV, [], "/var/lib/d/a")
    assert set(env) == {"PATH", "HOME", "TZ", "LANG", "LC_ALL", "TMPDIR", "XDG_CACHE_HOME", "PYTHONNOUSERSITE"}
    assert env["HOME"] == env["XDG_CACHE_HOME"] == "/var/lib/d/a"
    assert "LC_FOO" not in env  # no prefix match


def test_env_sets_private_tmp_nousersite_and_its_own_path() -> None:
    """The gateway's TMPDIR (/tmp: shared by every account) and PATH never reach a plugin."""
    env = build_env(GATEWAY_ENV, ["TMPDIR", "PATH", "HOME"], "/var/lib/d/a", "/usr/bin:/bin")
    assert env["TMPDIR"] == "/var/lib/d/a/tmp" and env["PATH"] == "/usr/bin:/bin"
    assert env["HOME"] == "/var/lib/d/a" and env["PYTHONNOUSERSITE"] == "1"


def test_env_passthrough_and_fallback_path() -> None:
    env = build_env({"HTTPS_PROXY": "p"}, [" HTTPS_PROXY ", ""], None)
    assert env == {"HTTPS_PROXY": "p", "PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}


def test_allowlist_has_the_thirteen_lc_names() -> None:
    assert len(LC_NAMES) == 13 and len(set(ALLOWLIST)) == 19


@given(st.dictionaries(st.text(min_size=1, max_size=12), st.text(max_size=5), max_size=20))
def test_env_never_contains_anything_outside_the_allowlist(gw: dict[str, str]) -> None:
    env = build_env(gw, [], "/h")
    assert set(env) <= set(ALLOWLIST) | set(SET_BY_GATEWAY)


# ---- credential building ----------------------------------------------------------------

def test_confined_spec_drops_and_chdirs_after_the_drop() -> None:
    r = ResolvedAccount("default", 61001, 61002, "/var/lib/d/default", "default")
    spec = build_spawn_spec(r, "/opt/p/echo/run", ServiceConfig(), GATEWAY_ENV, timeout=9, unconfined_workdir="/u")
    assert spec.argv[:2] == (TRAMPOLINE, "-c")
    assert spec.argv[3:] == (TRAMPOLINE_NAME, "/var/lib/d/default", "/opt/p/echo/run")
    assert (spec.uid, spec.gid, spec.groups, spec.umask) == (61001, 61002, (), 0o077)
    assert spec.workdir == "/var/lib/d/default"
    assert spec.env["HOME"] == spec.env["XDG_CACHE_HOME"] == "/var/lib/d/default"
    assert "DUCTILE_VAULT_KEY" not in spec.env and "LD_PRELOAD" not in spec.env
    assert spec.timeout == 9 and spec.max_stdout == ServiceConfig().max_plugin_output
    assert "s3cret" not in repr(spec)


def test_unconfined_spec_has_no_identity() -> None:
    spec = build_spawn_spec(ResolvedAccount.unconfined(), "/opt/p/e/run", ServiceConfig(), GATEWAY_ENV,
                            timeout=1, unconfined_workdir="/var/lib/ductile/unconfined/e")
    assert spec.argv[3:] == (TRAMPOLINE_NAME, "/var/lib/ductile/unconfined/e", "/opt/p/e/run")
    assert spec.uid is None and spec.gid is None and not spec.drops
    assert spec.workdir == "/var/lib/ductile/unconfined/e"


def test_spec_building_validates_first() -> None:
    with pytest.raises(AccountDropFailed):
        build_spawn_spec(ResolvedAccount("x", 0, 0, "/d", "granted"), "/e", ServiceConfig(), {}, timeout=1,
                         unconfined_workdir="/u")


def test_passthrough_reaches_the_spec() -> None:
    svc = dataclasses.replace(ServiceConfig(), plugin_env_passthrough=("HTTPS_PROXY",))
    spec = build_spawn_spec(ResolvedAccount("a", 61001, 61001, "/d/a", "granted"), "/e", svc, GATEWAY_ENV,
                            timeout=1, unconfined_workdir="/u")
    assert spec.env["HTTPS_PROXY"] == "p"
