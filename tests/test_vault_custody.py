"""Key custody under real crashes: ``vault rotate-key`` is SIGKILLed at every filesystem
step it takes, then the fixes doctor prints are run as printed — and the vault must open,
with every secret, and no file a retired key opens may be left behind.

The crash is injected in a real ``ductile`` process: a wrapper counts the calls that change
the filesystem (open with O_CREAT, write, fsync, link, rename/replace, unlink) and sends
the process SIGKILL just before the Nth one, for every N the rotation makes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import run_ductile
from vault_helpers import canary, store_at, write_config

from ductile.config import load_config
from ductile.errors import VaultError
from ductile.vault import lifecycle
from ductile.vault.audit import ATTEMPT, NullAuditSink
from ductile.vault.doctor import vault_findings
from ductile.vault.keyfile import read_identity, write_new_key
from ductile.vault.store import VaultStore

CRASHER = textwrap.dedent("""
    import atexit, os, signal, sys
    crash_at, seen = int(os.environ["CRASH_AT"]), [0]
    def step(name, real):
        def call(*args, **kwargs):
            if name == "open" and not ((args[1] if len(args) > 1 else kwargs.get("flags", 0)) & os.O_CREAT):
                return real(*args, **kwargs)
            seen[0] += 1
            if seen[0] == crash_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return call
    for name in ("open", "write", "fsync", "link", "rename", "replace", "unlink"):
        setattr(os, name, step(name, getattr(os, name)))
    atexit.register(lambda: open(os.environ["CRASH_COUNT"], "w").write(str(seen[0])))
    from ductile.cli import main
    main(sys.argv[1:])
""")
COMMANDS = re.compile(r"(ductile vault recover|unlink \S+|shred -u \S+)")


def _crashed_run(cfg: Path, crash_at: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CRASH_AT": str(crash_at), "CRASH_COUNT": str(cfg / "crash-count"), "NO_COLOR": "1"}
    env.pop("DUCTILE_DEBUG", None)
    return subprocess.run([sys.executable, "-c", CRASHER, *args, "--config", str(cfg)], capture_output=True,
                          text=True, env=env, timeout=120)


def _world(tmp_path: Path) -> tuple[Path, VaultStore, dict[str, str]]:
    cfg = write_config(tmp_path)
    store = store_at(cfg)
    lifecycle.init_vault(store, NullAuditSink(), "t")
    values = {f"s{i}": canary() for i in range(3)}
    for name, value in values.items():
        lifecycle.set_secret(store, name, value, [], NullAuditSink(), "t")
    return cfg, store, values


def _opens(identity: object, path: str) -> bool:
    try:
        VaultStore("", path).read(identity)
    except VaultError:
        return False
    return True


def _follow_the_printed_fixes(cfg: Path) -> list[str]:
    """Run every command doctor's vault findings print, as printed, until none is left."""
    ran: list[str] = []
    for _ in range(5):
        fixes = [f.fix for f in vault_findings(load_config(str(cfg))) if f.severity in ("error", "warning")]
        commands = [m.group(1) for fix in fixes for m in [COMMANDS.search(fix)] if m]
        assert len(commands) == len(fixes), f"a fix names no command to run: {fixes}"
        if not commands:
            return ran
        command = commands[0]
        ran.append(command)
        if command.startswith("ductile "):
            proc = run_ductile(*command.split()[1:], env={"DUCTILE_CONFIG_DIR": str(cfg)})
        else:
            proc = subprocess.run(command.split(), capture_output=True, text=True)
        assert proc.returncode == 0, (command, proc.stdout, proc.stderr)
    raise AssertionError(f"the fixes never converge: {ran}")


def _assert_sound(store: VaultStore, values: dict[str, str], retired: object) -> None:
    doc = store.read()
    assert {n: doc.secrets[n].value for n in values} == values
    for leftover in (store.new_key_file, store.old_key_file):
        assert not os.path.lexists(leftover), leftover
    assert store.stale_temps() == []
    assert os.stat(store.key_file).st_nlink == 1
    current = read_identity(store.key_file)
    assert _opens(current, store.backup_file)
    if str(current) != str(retired):  # rotated: the retired key opens nothing that is left
        assert not _opens(retired, store.vault_file) and not _opens(retired, store.backup_file)


def test_rotate_key_killed_at_every_step_then_the_printed_fixes_leave_a_vault_that_opens(tmp_path: Path) -> None:
    cfg, store, values = _world(tmp_path)
    outcomes: dict[str, int] = {}
    for crash_at in range(1, 200):  # until a run gets through all its steps before the crash point
        retired = read_identity(store.key_file)
        proc = _crashed_run(cfg, crash_at, "vault", "rotate-key")
        if proc.returncode == 0:
            os.unlink(store.old_key_file)
            break
        assert proc.returncode == -signal.SIGKILL, (crash_at, proc.stderr)
        assert store.read().secrets  # whatever the crash left, the key in place opens the vault
        ran = _follow_the_printed_fixes(cfg)
        assert not any(c.startswith("shred") and ".new" in c for c in ran)
        _assert_sound(store, values, retired)
        kind = "finished" if str(read_identity(store.key_file)) != str(retired) else "rolled back"
        outcomes[kind] = outcomes.get(kind, 0) + 1
    assert crash_at > 20 and outcomes.get("finished") and outcomes.get("rolled back"), (crash_at, outcomes)
    rotated = run_ductile("vault", "rotate-key", "--config", str(cfg))
    assert rotated.returncode == 0, rotated.stderr


def test_the_hard_link_an_old_release_left_is_unlinked_never_shredded(tmp_path: Path) -> None:
    """The state an interrupted rotation of earlier releases left: <key>.old a hard link of
    <key>, <key>.new beside them, the vault encrypted to both."""
    cfg, store, values = _world(tmp_path)
    old = read_identity(store.key_file)
    from pyrage import x25519  # type: ignore[import-untyped]

    new = x25519.Identity.generate()
    write_new_key(store.new_key_file, new)
    with store.locked():
        store._write(store.read(old), [old.to_public(), new.to_public()], [old, new])
    os.link(store.key_file, store.old_key_file)
    findings = vault_findings(load_config(str(cfg)))
    link = [f for f in findings if "hard link" in f.message]
    assert link and link[0].severity == "error" and link[0].fix.startswith(f"unlink {store.old_key_file}")
    commands = [m.group(1) for f in findings for m in [COMMANDS.search(f.fix)] if m]
    assert not any(c.startswith("shred") for c in commands), commands  # nothing here may be shredded
    ran = _follow_the_printed_fixes(cfg)
    assert ran[0] == f"unlink {store.old_key_file}" and "ductile vault recover" in ran
    _assert_sound(store, values, old)


def test_an_attempt_row_is_on_record_before_the_vault_changes(tmp_path: Path) -> None:
    cfg, store, _ = _world(tmp_path)
    changed = 0
    for crash_at in range(1, 100):  # vault set killed at each step, until one run gets through
        value = canary()
        env = {**os.environ, "CRASH_AT": str(crash_at), "CRASH_COUNT": str(cfg / "crash-count")}
        proc = subprocess.run([sys.executable, "-c", CRASHER, "vault", "set", "s0", "--config", str(cfg)],
                              input=value, capture_output=True, text=True, env=env, timeout=120)
        changed += store.read().secrets["s0"].value == value
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr
    rows = run_ductile("vault", "audit", "--json", "--limit", "1000", "--config", str(cfg))
    assert rows.returncode == 0, rows.stderr
    audit = [r for r in json.loads(rows.stdout) if r["op"] == "set"]
    attempts = [r for r in audit if r["outcome"] == ATTEMPT]
    oks = [r for r in audit if r["outcome"] == "ok"]
    # killed after the vault was replaced but before its outcome row: the change is still on record
    assert changed >= 2 and len(oks) == 1
    assert len(attempts) >= changed and all(r["detail"]["detail"] == "secret=s0" for r in attempts)


def test_a_failed_write_mid_rotation_rolls_back_by_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, store, values = _world(tmp_path)
    before = read_identity(store.key_file)
    real = os.replace

    def full_at_the_key(src: str, dst: str) -> None:
        if dst == store.key_file:
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", full_at_the_key)
    with pytest.raises(OSError):
        store.rotate_key()
    monkeypatch.undo()
    assert str(read_identity(store.key_file)) == str(before)
    _assert_sound(store, values, before)
