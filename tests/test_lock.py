"""Plugin attestation: keyed fingerprints, the lock file, and the spawn-time downgrade."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
import sqlite3
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ductile.config.model import AccountConfig, Config
from ductile.errors import NoDowngradeTarget
from ductile.privsep.accounts import ResolvedAccount
from ductile.privsep.fingerprint import (Fingerprint, bind_fingerprint, confirmation_code, diff_lock, fingerprint,
                                         keyed_hash, lock_state)
from wallworld import PROBE_PLUGIN, World, destroy, make_world, require_root

KEY = bytes(range(32))


# ---- pure ---------------------------------------------------------------------------------

@given(data=st.binary(min_size=1, max_size=2048), index=st.integers(min_value=0), flip=st.integers(1, 255),
       which=st.sampled_from(["manifest", "entrypoint"]))
def test_any_single_byte_change_is_detected(data: bytes, index: int, flip: int, which: str) -> None:
    i = index % len(data)
    changed = data[:i] + bytes([data[i] ^ flip]) + data[i + 1:]
    before = fingerprint(KEY, "p", "/m", data, "/e", data)
    after = fingerprint(KEY, "p", "/m", changed if which == "manifest" else data,
                        "/e", changed if which == "entrypoint" else data)
    assert lock_state(after, before, True) == "drifted"
    assert lock_state(before, before, True) == "locked"


def test_the_hash_is_keyed() -> None:
    assert keyed_hash(KEY, b"x") != keyed_hash(bytes(32), b"x")
    with pytest.raises(ValueError):
        keyed_hash(b"short", b"x")


@pytest.mark.parametrize("current,locked,exists,state", [
    ("a", "a", True, "locked"), ("a", "b", True, "drifted"), ("a", None, True, "unlocked"),
    (None, "a", True, "drifted"), ("a", None, False, "no-lock"),
])
def test_lock_states(current, locked, exists, state) -> None:  # type: ignore[no-untyped-def]
    fp = {n: Fingerprint("p", "/m", n, "/e", n) for n in "ab"}
    assert lock_state(fp.get(current), fp.get(locked), exists) == state


def cfg(untrusted: bool = True) -> Config:
    accts = {"default": AccountConfig(61001, 61001, "/d/default"), "ops": AccountConfig(61003, 61003, "/d/ops")}
    if untrusted:
        accts["untrusted"] = AccountConfig(61002, 61002, "/d/untrusted")
    return Config(accounts=accts)


OPS = ResolvedAccount("ops", 61003, 61003, "/d/ops", "granted")


@pytest.mark.parametrize("state,name,source", [
    ("locked", "ops", "granted"), ("no-lock", "ops", "granted"),
    ("drifted", "untrusted", "downgraded"), ("unlocked", "untrusted", "downgraded"),
])
def test_binding(state: str, name: str, source: str) -> None:
    b = bind_fingerprint(OPS, state, cfg(), "p")  # type: ignore[arg-type]
    assert (b.account.name, b.account.source) == (name, source)
    assert b.downgraded_from == ("ops" if source == "downgraded" else None)
    assert b.account.validate() is b.account


def test_no_downgrade_target_is_terminal_and_explained() -> None:
    with pytest.raises(NoDowngradeTarget) as err:
        bind_fingerprint(OPS, "drifted", cfg(untrusted=False), "p")
    assert err.value.terminal and "no `untrusted` account" in err.value.message and "plugin lock p" in err.value.fix


def test_unconfined_plugins_are_never_downgraded() -> None:
    b = bind_fingerprint(ResolvedAccount.unconfined(), "drifted", cfg(untrusted=False), "p")
    assert b.account.source == "unconfined" and not b.attested


def test_confirmation_code_tracks_the_entries() -> None:
    a = Fingerprint("a", "/m", "1", "/e", "2")
    b = Fingerprint("b", "/m", "3", "/e", "4")
    code = confirmation_code([a, b])
    assert len(code) == 5 and code == confirmation_code([b, a])
    assert code != confirmation_code([a, Fingerprint("b", "/m", "3", "/e", "5")])
    assert code != confirmation_code([a])


def test_diff() -> None:
    x = Fingerprint("x", "/m", "1", "/e", "1")
    d = diff_lock({"x": x, "new": x}, {"x": Fingerprint("x", "/m", "1", "/e", "2"), "gone": x})
    assert (d.added, d.changed, d.removed) == (("new",), ("x",), ("gone",))


# ---- real: lock file and spawn-time downgrade ------------------------------------------------

@pytest.fixture(scope="module", params=["root", "cap-only"])
def world(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    require_root()
    w = make_world(0 if request.param == "root" else None, ["default", "untrusted", "ops"],
                   {"probe": "{run_as: ops}", "other": "{run_as: ops}"}, {"probe": PROBE_PLUGIN, "other": PROBE_PLUGIN})
    yield w
    destroy(w)


def lock(world: World, *args: str):  # type: ignore[no-untyped-def]
    return world.run("plugin", "lock", *args)


def uid_of_probe(world: World) -> tuple[int, dict]:  # type: ignore[type-arg]
    out = json.loads(world.plugin_run("probe", {}).stdout)
    return out["outcome"]["result"]["resuid"][0] if out["outcome"]["result"] else -1, out


def events(world: World, type_: str) -> list[dict]:  # type: ignore[type-arg]
    conn = sqlite3.connect(f"file:{world.db}?mode=ro", uri=True)
    try:
        return [json.loads(r[0]) for r in conn.execute("SELECT payload FROM events WHERE type = ?", (type_,))]
    finally:
        conn.close()


privileged = pytest.mark.privileged


@contextmanager
def drifted(world: World, plugin: str = "probe") -> Iterator[None]:
    """The plugin's entrypoint with one extra comment line, restored afterwards."""
    entry = world.base / "plugins" / plugin / "run.py"
    original = entry.read_bytes()
    entry.write_bytes(original + b"# drift\n")
    try:
        yield
    finally:
        entry.write_bytes(original)


@privileged
def test_lock_all_preview_then_commit_and_stale_code_refused(world: World) -> None:
    checksums = world.etc / ".checksums"
    checksums.unlink(missing_ok=True)
    preview = lock(world, "--all")
    assert preview.returncode == 0, preview.stderr
    assert "+ new      other" in preview.stdout and "+ new      probe" in preview.stdout
    code = preview.stdout.split("confirmation code: ")[1].split()[0]
    assert not checksums.exists()  # a preview writes nothing
    entry = world.base / "plugins" / "other" / "run.py"
    original = entry.read_bytes()
    entry.write_bytes(original + b"\n# changed after the preview\n")
    try:
        stale = lock(world, "--all", code)
        assert stale.returncode == 1 and "does not match" in stale.stderr and not checksums.exists()
    finally:
        entry.write_bytes(original)
    done = lock(world, "--all", code)
    assert done.returncode == 0, done.stderr
    st_ = checksums.stat()
    assert stat.S_IMODE(st_.st_mode) == 0o600 and st_.st_uid == world.gateway_uid
    again = json.loads(lock(world, "--all", "--json").stdout)
    assert again["unchanged"] == ["other", "probe"] and not again["added"] and not again["changed"]
    rows = {r["name"]: r["lock"] for r in json.loads(world.run("plugin", "list", "--json").stdout)["plugins"]}
    assert rows == {"other": "locked", "probe": "locked"}


@privileged
def test_a_flipped_byte_downgrades_the_next_job_to_untrusted(world: World) -> None:
    assert lock(world, "probe").returncode == 0 and lock(world, "other").returncode == 0
    uid, _ = uid_of_probe(world)
    assert uid == world.accounts["ops"]
    entry = world.base / "plugins" / "probe" / "run.py"
    original = entry.read_bytes()
    i = original.index(b"Wall probe")  # one byte, in the docstring, so the plugin still runs
    entry.write_bytes(original[:i] + bytes([original[i] ^ 0x20]) + original[i + 1:])
    try:
        uid, out = uid_of_probe(world)
        assert uid == world.accounts["untrusted"], out
        assert out["account"]["source"] == "downgraded" and out["lock"]["state"] == "drifted"
        assert any(e["plugin"] == "probe" and e["from"] == "ops" and e["to"] == "untrusted"
                   for e in events(world, "plugin.account_downgraded"))
        listed = {r["name"]: r["lock"] for r in json.loads(world.run("plugin", "list", "--json").stdout)["plugins"]}
        assert listed["probe"] == "drifted"
        explained = json.loads(world.run("account", "explain", "probe", "--json").stdout)
        assert explained["lock_state"] == "drifted" and "untrusted" in explained["on_fingerprint_mismatch"]
        report = json.loads(world.run("doctor", "--json").stdout)
        assert any(f["field"] == "plugins.probe" and "drifted" in f["message"] for f in report["findings"])
    finally:
        entry.write_bytes(original)
    uid, _ = uid_of_probe(world)
    assert uid == world.accounts["ops"]


@privileged
def test_without_an_untrusted_tier_the_job_fails_terminally(world: World) -> None:
    assert lock(world, "probe").returncode == 0
    text = (world.etc / "config.yaml").read_text()
    uid = world.accounts["untrusted"]
    line = f"  untrusted: {{uid: {uid}, gid: {uid}, state_dir: {world.state_dir('untrusted')}}}\n"
    assert line in text
    (world.etc / "config.yaml").write_text(text.replace(line, ""))
    try:
        with drifted(world):
            proc = world.plugin_run("probe", {})
        out = json.loads(proc.stdout)
        assert proc.returncode == 1
        assert out["outcome"]["status"] == "failed" and out["outcome"]["terminal"] is True
        assert out["outcome"]["error"]["kind"] == "no_downgrade_target" and out["pid"] is None
        assert "no `untrusted` account" in proc.stderr
    finally:
        (world.etc / "config.yaml").write_text(text)


@privileged
def test_a_drifted_vault_principal_gets_no_secrets(world: World) -> None:
    from test_vault_delivery import vault_cli

    assert vault_cli(world, "principal", "add", "probe").returncode == 0
    assert vault_cli(world, "set", "probe-token", "--grant", "probe", input="s3cr3t-value").returncode == 0
    assert lock(world, "probe").returncode == 0
    ok = json.loads(world.plugin_run("probe", {}).stdout)
    assert ok["secrets_delivered"] == ["probe-token"]
    with drifted(world):
        proc = world.plugin_run("probe", {})
        out = json.loads(proc.stdout)
        assert out["outcome"]["status"] == "failed" and out["outcome"]["terminal"] is True
        assert out["outcome"]["error"]["kind"] == "fingerprint_mismatch" and out["pid"] is None
        assert "s3cr3t-value" not in proc.stdout + proc.stderr
        rows = json.loads(vault_cli(world, "audit", "--json", "--principal", "probe").stdout)
        assert rows[0]["op"] == "fingerprint_mismatch" and rows[0]["outcome"] == "security_alert"


@privileged
def test_lock_file_keeps_owner_and_mode_when_rewritten_as_root() -> None:
    require_root()
    w = make_world(0, ["default", "untrusted"], {"probe": "{}"}, {"probe": PROBE_PLUGIN})
    try:
        assert lock(w, "probe").returncode == 0
        checksums = w.etc / ".checksums"
        os.chown(checksums, 61999, 61999)  # as if the gateway account owned it
        os.chmod(checksums, 0o600)
        assert lock(w, "probe").returncode == 0  # rewritten by root
        st_ = checksums.stat()
        assert (st_.st_uid, st_.st_gid, stat.S_IMODE(st_.st_mode)) == (61999, 61999, 0o600)
    finally:
        destroy(w)


@privileged
def test_no_vault_no_lock() -> None:
    require_root()
    w = make_world(0, ["default"], {"probe": "{}"}, {"probe": PROBE_PLUGIN})
    try:
        w.vault.unlink()
        proc = lock(w, "probe")
        assert proc.returncode == 1 and "vault init" in proc.stderr and not (w.etc / ".checksums").exists()
    finally:
        destroy(w)


@privileged
def test_lock_all_with_nothing_to_lock_asks_for_no_code() -> None:
    require_root()
    w = make_world(None, ["default"], {}, {})
    try:
        proc = lock(w, "--all")
        assert proc.returncode == 0, proc.stderr
        assert "confirmation code" not in proc.stdout and "nothing to lock: no configured plugin" in proc.stdout
        assert json.loads(lock(w, "--all", "--json").stdout)["code"] is None
        assert not (w.etc / ".checksums").exists()
    finally:
        destroy(w)


@privileged
def test_lock_all_lists_what_it_would_lock_and_stops_asking_once_locked(world: World) -> None:
    (world.etc / ".checksums").unlink(missing_ok=True)
    preview = lock(world, "--all")
    assert f"+ new      probe  ({world.base / 'plugins' / 'probe' / 'run.py'})" in preview.stdout
    code = preview.stdout.split("confirmation code: ")[1].split()[0]
    assert lock(world, "--all", code).returncode == 0
    again = lock(world, "--all")
    assert "no changes: 2 plugin(s) already locked; nothing to write" in again.stdout
    assert "confirmation code" not in again.stdout
