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
from ductile.privsep.fingerprint import (Fingerprint, bind_fingerprint, confirmation_code, diff_lock, file_changes,
                                         fingerprint, is_bytecode, keyed_hash, lock_state)
from wallworld import PROBE_PLUGIN, World, destroy, make_world, require_root

KEY = bytes(range(32))


# ---- pure ---------------------------------------------------------------------------------

def fp(name: str = "p", **digests: str) -> Fingerprint:
    """A fingerprint from file digests; ``interp`` names the interpreter's digest."""
    interp = digests.pop("interp", "i")
    return fingerprint(name, "/opt/p/" + name, "/opt/p/" + name + "/run.py",
                       [(rel.replace("_", "."), h) for rel, h in digests.items()], [("/usr/bin/python3.11", interp)])


@given(data=st.binary(min_size=1, max_size=2048), index=st.integers(min_value=0), flip=st.integers(1, 255),
       which=st.sampled_from(["manifest", "entrypoint", "helper", "interpreter"]))
def test_any_single_byte_change_anywhere_is_detected(data: bytes, index: int, flip: int, which: str) -> None:
    i = index % len(data)
    changed = data[:i] + bytes([data[i] ^ flip]) + data[i + 1:]

    def make(target: str | None) -> Fingerprint:
        h = {w: keyed_hash(KEY, changed if w == target else data) for w in ("manifest", "entrypoint", "helper", "interpreter")}
        return fingerprint("p", "/d", "/d/run.py", [("manifest.yaml", h["manifest"]), ("run.py", h["entrypoint"]),
                                                    ("_stopwatch.py", h["helper"])], [("/usr/bin/python3.11", h["interpreter"])])
    before, after = make(None), make(which)
    assert lock_state(after, before, True) == "drifted"
    assert lock_state(before, before, True) == "locked"
    assert file_changes(after, before) == [("~", {"manifest": "manifest.yaml", "entrypoint": "run.py",
                                                  "helper": "_stopwatch.py", "interpreter": "interpreter /usr/bin/python3.11"}[which])]


def test_file_changes_and_bytecode() -> None:
    before = fp(run_py="1", helper_py="2")
    after = fp(run_py="1", other_py="3", interp="j")
    assert file_changes(after, before) == [("-", "helper.py"), ("+", "other.py"), ("~", "interpreter /usr/bin/python3.11")]
    assert [r for r in ("x/__pycache__/a.cpython-311.pyc", "a.pyc", "__pycache__", "run.py", "lib/pycache.py")
            if is_bytecode(r)] == ["x/__pycache__/a.cpython-311.pyc", "a.pyc", "__pycache__"]


def test_the_hash_is_keyed() -> None:
    assert keyed_hash(KEY, b"x") != keyed_hash(bytes(32), b"x")
    with pytest.raises(ValueError):
        keyed_hash(b"short", b"x")


@pytest.mark.parametrize("current,locked,exists,state", [
    ("a", "a", True, "locked"), ("a", "b", True, "drifted"), ("a", None, True, "unlocked"),
    (None, "a", True, "drifted"), ("a", None, False, "no-lock"),
])
def test_lock_states(current, locked, exists, state) -> None:  # type: ignore[no-untyped-def]
    fps = {n: fp(run_py=n) for n in "ab"}
    assert lock_state(fps.get(current), fps.get(locked), exists) == state


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


def test_confirmation_code_tracks_every_file_and_the_interpreter() -> None:
    a, b = fp("a", run_py="1"), fp("b", run_py="3")
    code = confirmation_code([a, b])
    assert len(code) == 5 and code == confirmation_code([b, a])
    assert code != confirmation_code([a, fp("b", run_py="4")])
    assert code != confirmation_code([a, fp("b", run_py="3", helper_py="5")])
    assert code != confirmation_code([a, fp("b", run_py="3", interp="j")])
    assert code != confirmation_code([a])


def test_diff() -> None:
    x = fp("x", run_py="1")
    d = diff_lock({"x": x, "new": x}, {"x": fp("x", run_py="1", helper_py="2"), "gone": x})
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
def test_a_helper_changed_after_lock_downgrades_and_delivers_no_secrets(world: World) -> None:
    """#10 attack 3, second half: a helper next to run.py is part of the plugin."""
    from test_vault_delivery import vault_cli

    helper = world.base / "plugins" / "probe" / "_stopwatch.py"
    helper.write_text("def lap():\n    return 1\n")
    os.chmod(helper, 0o644)
    try:
        vault_cli(world, "principal", "add", "probe")
        vault_cli(world, "set", "probe-token", "--grant", "probe", input="s3cr3t-value")
        assert lock(world, "probe").returncode == 0
        ok = json.loads(world.plugin_run("probe", {}).stdout)
        assert ok["account"]["name"] == "ops" and ok["secrets_delivered"] == ["probe-token"]
        helper.write_text("def lap():\n    import os; return os.system('id')\n")
        proc = world.plugin_run("probe", {})
        out = json.loads(proc.stdout)
        assert out["outcome"]["error"]["kind"] == "fingerprint_mismatch" and out["pid"] is None
        assert out["lock"]["state"] == "drifted" and "~_stopwatch.py" in out["lock"]["reason"]
        assert "s3cr3t-value" not in proc.stdout + proc.stderr
        listed = {r["name"]: r["lock"] for r in json.loads(world.run("plugin", "list", "--json").stdout)["plugins"]}
        assert listed["probe"] == "drifted"
        # without a principal the same drift is a downgrade to untrusted
        vault_cli(world, "principal", "revoke", "probe")
        text = (world.etc / "config.yaml").read_text()
        (world.etc / "config.yaml").write_text(text.replace("probe: {run_as: ops}", "probe: {run_as: ops, vault_principal: nobody}"))
        try:
            out = json.loads(world.plugin_run("probe", {}).stdout)
            assert out["account"]["name"] == "untrusted" and out["account"]["source"] == "downgraded"
        finally:
            (world.etc / "config.yaml").write_text(text)
        preview = lock(world, "--all", "--verbose")
        assert "~ changed  probe" in preview.stdout and "    ~ _stopwatch.py" in preview.stdout
        assert "    ~ run.py" not in preview.stdout  # unchanged files are not listed
        short = lock(world, "--all")
        assert "~ changed  probe" in short.stdout and "_stopwatch.py" not in short.stdout
    finally:
        helper.unlink()


@privileged
def test_an_interpreter_changed_after_lock_drifts(world: World) -> None:
    """The lock records the #! chain's path and bytes: an upgraded (or swapped) interpreter
    is a change the operator reviews."""
    wrap = world.base / "interp"
    wrap.mkdir(mode=0o755, exist_ok=True)
    os.chmod(wrap, 0o755)
    (wrap / "py").write_text("#!/bin/sh\nexec /usr/bin/python3 \"$@\"\n")
    os.chmod(wrap / "py", 0o755)
    entry = world.base / "plugins" / "other" / "run.py"
    original = entry.read_bytes()
    entry.write_bytes(original.replace(b"#!/usr/bin/python3", f"#!{wrap / 'py'}".encode(), 1))
    try:
        assert lock(world, "other").returncode == 0
        fp = json.loads(lock(world, "other", "--json").stdout)
        assert [i["path"] for i in fp["interpreter"]] == [str(wrap / "py"), "/usr/bin/dash"]
        assert json.loads(world.plugin_run("other", {}).stdout)["account"]["name"] == "ops"
        (wrap / "py").write_text("#!/bin/sh\n# upgraded\nexec /usr/bin/python3 \"$@\"\n")
        out = json.loads(world.plugin_run("other", {}).stdout)
        assert out["account"]["name"] == "untrusted" and f"interpreter {wrap / 'py'}" in out["lock"]["reason"]
    finally:
        entry.write_bytes(original)


@privileged
def test_a_format_1_lock_is_refused_with_the_exact_command_then_replaced(world: World) -> None:
    checksums = world.etc / ".checksums"
    checksums.write_text("version: 1\nplugins:\n- {name: probe, manifest_path: /m, manifest_hash: aa, "
                         "entrypoint_path: /e, entrypoint_hash: bb}\n")
    os.chown(checksums, world.gateway_uid, world.gateway_uid)
    command = f"ductile plugin lock --all --config {world.etc / 'config.yaml'}"
    listed = {r["name"]: r["lock"] for r in json.loads(world.run("plugin", "list", "--json").stdout)["plugins"]}
    assert listed == {"other": "outdated", "probe": "outdated"}
    out = json.loads(world.plugin_run("probe", {}).stdout)
    assert out["account"]["name"] == "untrusted" and command in out["lock"]["reason"]
    doc = json.loads(world.run("doctor", "--json").stdout)
    assert any(f["field"] == "plugins.probe" and "outdated" in f["message"] and command in f["fix"] for f in doc["findings"])
    one = lock(world, "probe")
    assert one.returncode == 1 and command in one.stderr
    # the command it names does the job
    preview = world.run(*command.split()[1:-2])
    assert preview.returncode == 0 and "format 1" in preview.stdout and "~ changed  probe" in preview.stdout
    code = preview.stdout.split("confirmation code: ")[1].split()[0]
    assert lock(world, "--all", code).returncode == 0
    assert json.loads(world.plugin_run("probe", {}).stdout)["account"]["name"] == "ops"
    assert "version: 2" in checksums.read_text()


def test_the_plugin_directory_must_still_be_the_one_discovery_judged(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Renamed away and replaced (same bytes, same path) after discovery: the spawn refuses."""
    from ductile.errors import LockError, PluginError
    from ductile.lock import current
    from ductile.plugins.discovery import discover_plugins
    from ductile.runtime.executor import same_directory

    root = tmp_path / "plugins"
    (root / "p").mkdir(parents=True)
    os.chmod(root, 0o755)
    os.chmod(root / "p", 0o755)
    (root / "p" / "manifest.yaml").write_text("name: p\nprotocol: 2\nentrypoint: run\ncommands: [{name: poll, type: read}]\n")
    (root / "p" / "run").write_text("#!/bin/sh\necho '{}'\n")
    os.chmod(root / "p" / "run", 0o755)
    plugin = discover_plugins([str(root)]).plugins["p"]
    same_directory(plugin)
    current(KEY, plugin)
    os.rename(root / "p", root / "p.old")
    import shutil

    shutil.copytree(root / "p.old", root / "p")
    with pytest.raises(PluginError, match="replaced after discovery"):
        same_directory(plugin)
    with pytest.raises(LockError, match="replaced after discovery"):
        current(KEY, plugin)


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
