"""The deploy renderer as pure functions: what the config says is what the files say, and a
config that would produce a broken host is refused with the field, the rule and the fix."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ductile.config.model import AccountConfig, Config, SecretsConfig, ServiceConfig, StateConfig
from ductile.deploy import ARTEFACTS, plan_layout, render
from ductile.errors import ConfigError, UsageError

ETC = "/etc/ductile"
ACCOUNTS = {
    "default": AccountConfig(1001, 1001, "/var/lib/ductile/accounts/default"),
    "untrusted": AccountConfig(1002, 1002, "/var/lib/ductile/accounts/untrusted"),
}


def cfg(accounts: dict[str, AccountConfig] | None = None, **changes: object) -> Config:
    base = Config(accounts=dict(ACCOUNTS if accounts is None else accounts))
    return dataclasses.replace(base, **changes)


def lines(text: str) -> list[str]:
    """The directives, without comments and blank lines."""
    return [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def tmpfiles_entries(text: str) -> dict[str, tuple[str, str, str]]:
    out = {}
    for ln in lines(text):
        kind, path, mode, user, group, age = ln.split()
        assert (kind, age) == ("d", "-"), ln
        out[path] = (mode, user, group)
    return out


def unit_directives(text: str) -> dict[str, str]:
    out = {}
    for ln in lines(text):
        if ln.startswith("["):
            continue
        key, _, value = ln.partition("=")
        assert key not in out, f"{key} set twice"
        out[key] = value
    return out


# --- what the files say -------------------------------------------------------------------

def test_sysusers_writes_each_account_id_exactly_as_configured() -> None:
    text = render("sysusers", plan_layout(cfg(), config_dir=ETC))
    assert lines(text) == [
        'u ductile - "ductile gateway" /var/lib/ductile /usr/sbin/nologin',
        "g ductile-default 1001",
        'u ductile-default 1001:1001 "ductile account default" /var/lib/ductile/accounts/default /usr/sbin/nologin',
        "g ductile-untrusted 1002",
        'u ductile-untrusted 1002:1002 "ductile account untrusted" /var/lib/ductile/accounts/untrusted /usr/sbin/nologin',
    ]


def test_sysusers_writes_a_shared_gid_once_and_uid_gid_may_differ() -> None:
    accts = {
        "alpha": AccountConfig(61001, 62000, "/var/lib/ductile/accounts/alpha"),
        "beta": AccountConfig(61002, 62000, "/var/lib/ductile/accounts/beta"),
    }
    got = lines(render("sysusers", plan_layout(cfg(accts), config_dir=ETC, gateway_user="dgw")))
    assert got[0].startswith("u dgw - ")
    assert [ln for ln in got if ln.startswith("g ")] == ["g ductile-alpha 62000"]
    assert any(ln.startswith("u ductile-alpha 61001:62000 ") for ln in got)
    assert any(ln.startswith("u ductile-beta 61002:62000 ") for ln in got)


def test_tmpfiles_spec_layout() -> None:
    got = tmpfiles_entries(render("tmpfiles", plan_layout(cfg(), config_dir=ETC)))
    assert got == {
        "/etc/ductile": ("0700", "ductile", "ductile"),
        "/etc/ductile/secret": ("0700", "ductile", "ductile"),
        "/var/lib/ductile": ("0711", "ductile", "ductile"),
        "/var/lib/ductile/accounts": ("0711", "ductile", "ductile"),
        "/var/lib/ductile/accounts/default": ("0700", "1001", "1001"),
        "/var/lib/ductile/accounts/untrusted": ("0700", "1002", "1002"),
        "/var/backups/ductile": ("0700", "ductile", "ductile"),
        "/opt/ductile/plugins": ("0755", "root", "root"),
    }


def test_tmpfiles_lists_parents_before_children() -> None:
    paths = list(tmpfiles_entries(render("tmpfiles", plan_layout(cfg(), config_dir=ETC))))
    for i, p in enumerate(paths):
        for child in paths[:i]:
            assert not child.startswith(p + "/"), f"{child} comes before its parent {p}"


def test_every_directory_between_state_dir_and_an_account_is_0711() -> None:
    accts = {"deep": AccountConfig(1001, 1001, "/srv/dg/state/a/b/deep")}
    c = cfg(accts, state=StateConfig("/srv/dg/state/ductile.db"), secrets=SecretsConfig("/srv/dg/key/age.key", "/srv/dg/state/vault.age"),
            plugin_roots=("/srv/dg-plugins",))
    got = tmpfiles_entries(render("tmpfiles", plan_layout(c, config_dir="/srv/dg/etc")))
    assert got["/srv/dg/state"] == ("0711", "ductile", "ductile")
    assert got["/srv/dg/state/a"] == ("0711", "ductile", "ductile")
    assert got["/srv/dg/state/a/b"] == ("0711", "ductile", "ductile")
    assert got["/srv/dg/state/a/b/deep"] == ("0700", "1001", "1001")
    assert got["/srv/dg/key"] == ("0700", "ductile", "ductile")
    assert "/srv/dg" not in got  # left to tmpfiles' own 0755 root parents


def test_without_accounts_the_state_dir_stays_closed() -> None:
    got = tmpfiles_entries(render("tmpfiles", plan_layout(cfg({}), config_dir=ETC)))
    assert got["/var/lib/ductile"] == ("0700", "ductile", "ductile")
    assert not [p for p in got if "/accounts" in p]


def test_a_vault_outside_the_state_dir_gets_its_own_closed_directory_and_is_writable() -> None:
    c = cfg(secrets=SecretsConfig("/etc/ductile/secret/age.key", "/var/lib/ductile-vault/vault.age"))
    layout = plan_layout(c, config_dir=ETC)
    assert tmpfiles_entries(render("tmpfiles", layout))["/var/lib/ductile-vault"] == ("0700", "ductile", "ductile")
    assert unit_directives(render("unit", layout))["ReadWritePaths"] == "/var/lib/ductile /var/lib/ductile-vault"


def test_confined_unit_holds_exactly_the_two_drop_capabilities() -> None:
    d = unit_directives(render("unit", plan_layout(cfg(), config_dir=ETC)))
    assert d["User"] == d["Group"] == "ductile"
    assert d["AmbientCapabilities"] == "CAP_SETUID CAP_SETGID"
    assert d["CapabilityBoundingSet"] == "CAP_SETUID CAP_SETGID"
    assert d["NoNewPrivileges"] == "yes"
    assert d["UMask"] == "0077"
    assert d["Type"] == "notify" and d["KillMode"] == "mixed" and d["Restart"] == "on-failure"
    assert d["ExecStart"] == "/opt/ductile/venv/bin/ductile serve --config /etc/ductile"
    assert d["ProtectSystem"] == "strict" and d["ReadWritePaths"] == "/var/lib/ductile"
    assert d["ProtectHome"] == "yes" and d["PrivateDevices"] == "yes" and d["LimitCORE"] == "0"
    assert int(d["LimitNOFILE"]) >= 65536  # the gateway raises its soft limit to it (serve/limits.py)


@pytest.mark.parametrize("option", ["PrivateUsers", "ProtectProc", "ProcSubset", "StateDirectory", "DynamicUser",
                                    "MemoryDenyWriteExecute", "PrivateNetwork"])
def test_options_that_break_the_drop_are_explained_not_set(option: str) -> None:
    text = render("unit", plan_layout(cfg(), config_dir=ETC))
    assert option not in unit_directives(text)
    assert re.search(rf"^# - {option}=", text, re.M) or re.search(rf"^# - .*{option}=", text, re.M), \
        f"{option} is off without a comment saying why"


@pytest.mark.parametrize(("shutdown", "grace", "expect"), [(30.0, 5.0, 60), (100.0, 5.0, 130), (0.5, 0.2, 26)])
def test_stop_timeout_outlasts_the_drain(shutdown: float, grace: float, expect: int) -> None:
    c = cfg(service=ServiceConfig(shutdown_timeout=shutdown, kill_grace=grace))
    d = unit_directives(render("unit", plan_layout(c, config_dir=ETC)))
    assert d["TimeoutStopSec"] == f"{expect}s"
    assert expect > shutdown + grace


@pytest.mark.parametrize("c", [cfg({}), cfg(service=ServiceConfig(unconfined=True))], ids=["no-accounts", "unconfined"])
def test_unconfined_config_gets_a_unit_without_capabilities(c: Config) -> None:
    layout = plan_layout(c, config_dir="/etc/ductile-admin", gateway_user="ductile-admin")
    d = unit_directives(render("unit", layout))
    assert d["CapabilityBoundingSet"] == ""
    assert "AmbientCapabilities" not in d
    assert d["NoNewPrivileges"] == "yes"
    assert d["User"] == "ductile-admin"
    assert d["ExecStart"].endswith("serve --config /etc/ductile-admin")


def test_gateway_user_names_the_unit_and_conf_files() -> None:
    layout = plan_layout(cfg(), config_dir=ETC, gateway_user="dgw")
    assert (layout.unit_name, layout.conf_name) == ("dgw.service", "dgw.conf")
    assert "systemd-sysusers dgw.conf" in render("sysusers", layout)
    assert tmpfiles_entries(render("tmpfiles", layout))["/etc/ductile"] == ("0700", "dgw", "dgw")


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True),
                       st.tuples(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1)), min_size=1, max_size=6,
                       ).filter(lambda m: len({u for u, _ in m.values()}) == len(m)))
def test_every_account_appears_once_with_its_own_ids(accts: dict[str, tuple[int, int]]) -> None:
    config = cfg({n: AccountConfig(u, g, f"/var/lib/ductile/accounts/{n}") for n, (u, g) in accts.items()})
    layout = plan_layout(config, config_dir=ETC)
    users = render("sysusers", layout)
    dirs = tmpfiles_entries(render("tmpfiles", layout))
    for name, (uid, gid) in accts.items():
        assert len(re.findall(rf"^u ductile-{name} {uid}:{gid} ", users, re.M)) == 1
        assert re.search(rf"^g \S+ {gid}$", users, re.M)
        assert dirs[f"/var/lib/ductile/accounts/{name}"] == ("0700", str(uid), str(gid))
    assert len(re.findall(r"^g ", users, re.M)) == len({g for _, g in accts.values()})


@pytest.mark.parametrize("artefact", ARTEFACTS)
def test_rendering_is_deterministic(artefact: str) -> None:
    a = render(artefact, plan_layout(cfg(), config_dir=ETC))
    b = render(artefact, plan_layout(cfg(dict(reversed(list(ACCOUNTS.items())))), config_dir=ETC))
    assert a == b and a.endswith("\n") and "\t" not in a


# --- refusals -----------------------------------------------------------------------------

REFUSALS = [
    ("account outside the state dir",
     cfg({"default": AccountConfig(1001, 1001, "/srv/elsewhere/default")}), ETC,
     "accounts.default.state_dir", "not below the state directory /var/lib/ductile", "/var/lib/ductile/accounts/default"),
    ("vault inside an account dir",
     cfg(secrets=SecretsConfig("/etc/ductile/secret/age.key", "/var/lib/ductile/accounts/default/vault.age")), ETC,
     "secrets.vault_file", "overlap", "outside every account directory"),
    ("age key inside an account dir",
     cfg(secrets=SecretsConfig("/var/lib/ductile/accounts/untrusted/k/age.key", "/var/lib/ductile/vault.age")), ETC,
     "secrets.age_key_file", "overlap", "outside every account directory"),
    ("state database is an account dir",
     cfg({"default": AccountConfig(1001, 1001, "/var/lib/ductile/x/db")}, state=StateConfig("/var/lib/ductile/x/db")), ETC,
     "state.path", "overlap", "outside"),
    ("config dir is the state dir",
     cfg(), "/var/lib/ductile",
     "state.path", "0711", "separate directories"),
    ("config dir above the accounts",
     cfg({"a": AccountConfig(1001, 1001, "/srv/dg/state/a")}, state=StateConfig("/srv/dg/state/db"),
         secrets=SecretsConfig("/srv/dg/age.key", "/srv/dg/state/vault.age"), plugin_roots=("/srv/plug",)), "/srv/dg",
     "accounts.a.state_dir", "accounts cannot reach it", "move accounts.a.state_dir out of /srv/dg"),
    ("age key beside the account dirs",
     cfg(secrets=SecretsConfig("/var/lib/ductile/accounts/age.key", "/var/lib/ductile/vault.age")), ETC,
     "accounts.default.state_dir", "secrets.age_key_file", "separate directories"),
    ("plugin root inside the state dir",
     cfg(plugin_roots=("/var/lib/ductile/plugins",)), ETC,
     "plugin_roots[0]", "overlaps /var/lib/ductile", "/opt/ductile/plugins"),
    ("plugin root inside the config dir",
     cfg(plugin_roots=("/opt/ductile/plugins", "/etc/ductile/plugins")), ETC,
     "plugin_roots[1]", "overlaps /etc/ductile", "root-owned"),
    ("state database directly in /var/lib",
     cfg({}, state=StateConfig("/var/lib/ductile.db")), ETC,
     "state.path", "/var/lib is a system directory", "directory of ductile's own"),
    ("config directly in /etc",
     cfg(), "/etc",
     "--config-dir", "/etc is a system directory", "directory of ductile's own"),
    ("plugin root is /tmp",
     cfg({}, plugin_roots=("/tmp",)), ETC,
     "plugin_roots[0]", "/tmp is a system directory", "directory of ductile's own"),
    ("whitespace in a path",
     cfg({"default": AccountConfig(1001, 1001, "/var/lib/ductile/accounts/my dir")}), ETC,
     "accounts.default.state_dir", "character", "letters, digits"),
    ("percent in a path",
     cfg(state=StateConfig("/var/lib/ductile%i/ductile.db")), ETC,
     "state.path", "character", "letters, digits"),
    ("account name too long for a user name",
     cfg({"a" * 24: AccountConfig(1001, 1001, "/var/lib/ductile/accounts/long")}), ETC,
     f"accounts.{'a' * 24}", "longer than 31 characters", "at most 23 characters"),
    ("confined state under /home",
     cfg({"default": AccountConfig(1001, 1001, "/home/dg/accounts/default")}, state=StateConfig("/home/dg/ductile.db"),
         secrets=SecretsConfig("/etc/ductile/secret/age.key", "/var/lib/ductile/vault.age")), ETC,
     "state.path", "ProtectHome", "/var/lib"),
    ("confined config dir under /tmp",
     cfg(), "/tmp/ductile-draft",
     "--config-dir", "PrivateTmp", "/etc"),
]


@pytest.mark.parametrize(("case", "config", "config_dir", "field", "rule", "fix"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_broken_layouts_are_refused_naming_field_rule_and_fix(case: str, config: Config, config_dir: str,
                                                              field: str, rule: str, fix: str) -> None:
    with pytest.raises(ConfigError) as exc:
        plan_layout(config, config_dir=config_dir)
    err = exc.value
    assert err.where == field, err.one_line()
    assert rule in err.message, err.one_line()
    assert fix in err.fix, err.one_line()
    assert "\n" not in err.one_line()


def test_account_user_may_not_be_the_gateway_user() -> None:
    c = cfg({"admin": AccountConfig(1001, 1001, "/var/lib/ductile/accounts/admin")})
    with pytest.raises(ConfigError) as exc:
        plan_layout(c, config_dir=ETC, gateway_user="ductile-admin")
    assert exc.value.where == "accounts.admin" and "gateway user" in exc.value.message


@pytest.mark.parametrize("user", ["Ductile", "9gw", "a b", "x" * 32, ""])
def test_invalid_gateway_user_is_a_usage_error(user: str) -> None:
    with pytest.raises(UsageError) as exc:
        plan_layout(cfg(), config_dir=ETC, gateway_user=user)
    assert exc.value.where == "--gateway-user"


def test_unconfined_instance_may_live_where_the_sandbox_would_hide_it() -> None:
    # the unconfined unit has no ProtectHome=/PrivateTmp=, so only the confined one refuses
    c = cfg({}, state=StateConfig("/home/ops/dg/ductile.db"), secrets=SecretsConfig("/home/ops/dg/key/age.key", "/home/ops/dg/vault.age"))
    layout = plan_layout(c, config_dir="/home/ops/dg-etc")
    assert not layout.confined
    assert tmpfiles_entries(render("tmpfiles", layout))["/home/ops/dg"] == ("0700", "ductile", "ductile")
