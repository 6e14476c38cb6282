"""The vault file on disk: key rules, refusal of damaged files, crash-safe writes, the lock, rotation."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pyrage
import pytest
from pyrage import x25519
from vault_helpers import snapshot, store_at

from ductile.errors import VaultError
from ductile.vault import ops
from ductile.vault.document import utc_now
from ductile.vault.keyfile import KeyStat, key_file_problem, parse_identity_text, read_identity
from ductile.vault.store import VaultStore


@pytest.fixture
def store(tmp_path: Path) -> VaultStore:
    s = store_at(tmp_path)
    s.initialize()
    s.update(lambda d: (ops.add_principal(d, "echo", utc_now()), None))
    s.update(lambda d: (ops.set_secret(d, "tok", "first-value", ["echo"], utc_now())[0], None))
    return s


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _temps(directory: str) -> list[str]:
    return [n for n in os.listdir(directory) if n.endswith(".tmp")]


def test_init_creates_a_private_key_dir_key_and_vault(tmp_path: Path) -> None:
    s = store_at(tmp_path)
    outcome = s.initialize()
    assert outcome.key_created and outcome.public_key.startswith("age1")
    assert _mode(str(tmp_path / "secret")) == 0o700 and _mode(s.key_file) == 0o600 and _mode(s.vault_file) == 0o600
    text = Path(s.key_file).read_text()
    assert text.startswith("# created: ") and f"# public key: {outcome.public_key}" in text
    assert len(s.read().nonce_hex) == 64
    with pytest.raises(VaultError, match="already exists"):
        s.initialize()


def test_init_reuses_an_existing_key_and_refuses_a_loose_one(tmp_path: Path) -> None:
    (tmp_path / "secret").mkdir(mode=0o700)
    identity = x25519.Identity.generate()
    key = tmp_path / "secret" / "age.key"
    key.write_text(f"# a comment\n{identity}\n")
    key.chmod(0o640)
    s = store_at(tmp_path)
    with pytest.raises(VaultError, match="chmod 0600"):
        s.initialize()
    assert not os.path.exists(s.vault_file)
    key.chmod(0o600)
    outcome = s.initialize()
    assert not outcome.key_created and outcome.public_key == str(identity.to_public())


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o601, 0o610, 0o644, 0o666])
def test_key_with_any_group_or_other_bit_is_refused_with_path_rule_and_fix(mode: int) -> None:
    problem = key_file_problem("/k/age.key", KeyStat(stat.S_IFREG | mode, 0), 0)
    assert problem is not None
    line = problem.one_line()
    assert "/k/age.key" in line and f"{mode:04o}" in line and "chmod 0600 /k/age.key" in line


def test_key_owner_and_type_rules() -> None:
    assert key_file_problem("/k", KeyStat(stat.S_IFREG | 0o600, 1000), 1000) is None
    assert key_file_problem("/k", KeyStat(stat.S_IFREG | 0o400, 1000), 1000) is None
    foreign = key_file_problem("/k", KeyStat(stat.S_IFREG | 0o600, 61234), 1000)
    assert foreign is not None and "61234" in foreign.one_line() and "chown 1000 /k" in foreign.one_line()
    as_root = key_file_problem("/k", KeyStat(stat.S_IFREG | 0o600, 995), 0, "runuser -u ductile -- ductile vault list")
    assert as_root is not None and "chown" not in as_root.fix
    assert as_root.fix == "run it as the key's owner: runuser -u ductile -- ductile vault list"
    assert key_file_problem("/k", KeyStat(stat.S_IFDIR | 0o700, 1000), 1000) is not None


def test_loose_key_on_disk_is_refused_before_it_is_read(store: VaultStore) -> None:
    os.chmod(store.key_file, 0o640)
    with pytest.raises(VaultError) as info:
        store.read()
    assert store.key_file in info.value.one_line() and "chmod 0600" in info.value.one_line()


def _free_uid() -> int:
    for uid in range(61000, 62000):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise RuntimeError("no free uid in 61000-61999")


@pytest.mark.privileged
def test_key_owned_by_another_uid_is_refused(store: VaultStore) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to a foreign uid needs root")
    uid = _free_uid()
    os.chown(store.key_file, uid, -1)
    with pytest.raises(VaultError) as info:
        store.read()
    line = info.value.one_line()
    assert store.key_file in line and f"uid {uid}" in line
    # root is told to run the command as the key's owner, never to take the key (the gateway would lose it)
    assert "chown" not in line and f"--reuid={uid}" in line


def test_key_parsing_takes_the_one_secret_key_line() -> None:
    ident = str(x25519.Identity.generate())
    assert parse_identity_text(f"# created: x\n# public key: age1...\n{ident}\n", "k") == ident
    assert parse_identity_text(f"  {ident}  \r\n", "k") == ident
    with pytest.raises(VaultError, match="no AGE-SECRET-KEY-1"):
        parse_identity_text("# only comments\n", "k")
    with pytest.raises(VaultError, match="2 identities"):
        parse_identity_text(f"{ident}\n{ident}\n", "k")


def test_a_malformed_key_line_is_refused_without_echoing_it(tmp_path: Path) -> None:
    key = tmp_path / "age.key"
    key.write_text("AGE-SECRET-KEY-1NOTAREALKEYNOTAREALKEY\n")
    key.chmod(0o600)
    with pytest.raises(VaultError) as info:
        read_identity(str(key))
    assert "NOTAREALKEY" not in info.value.one_line() and str(key) in info.value.one_line()


def _damage(store: VaultStore, how: str) -> None:
    path = Path(store.vault_file)
    data = path.read_bytes()
    if how == "wrong-key":
        Path(store.key_file).write_text(f"{x25519.Identity.generate()}\n")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "header-truncated":
        path.write_bytes(data[:20])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "flipped-payload":
        path.write_bytes(data[:-10] + bytes([data[-10] ^ 0x01]) + data[-9:])
    elif how == "flipped-header":
        path.write_bytes(data[:60] + bytes([data[60] ^ 0x01]) + data[61:])
    elif how == "not-age":
        path.write_bytes(b'{"version": 1}')


DAMAGE = ["wrong-key", "truncated", "header-truncated", "empty", "flipped-payload", "flipped-header", "not-age"]


@pytest.mark.parametrize("how", DAMAGE)
def test_damage_is_one_vault_error_and_leaves_every_file_byte_identical(store: VaultStore, how: str) -> None:
    _damage(store, how)
    root = Path(store.vault_file).parent.parent
    before = snapshot(root)
    for attempt in (store.read, lambda: store.update(lambda d: (ops.add_principal(d, "more", utc_now()), None)),
                    store.rotate_key):
        with pytest.raises(VaultError) as info:
            attempt()
        line = info.value.one_line()
        assert "\n" not in line and store.vault_file in line and info.value.fix
        assert "first-value" not in line
    assert snapshot(root) == before


def test_update_keeps_the_previous_version_as_bak(store: VaultStore) -> None:
    previous = Path(store.vault_file).read_bytes()
    store.update(lambda d: (ops.set_secret(d, "tok", "second-value", [], utc_now())[0], None))
    assert Path(store.backup_file).read_bytes() == previous
    assert VaultStore(store.key_file, store.backup_file).read().secrets["tok"].value == "first-value"
    assert store.read().secrets["tok"].value == "second-value"
    assert _mode(store.backup_file) == 0o600


def test_a_write_that_does_not_read_back_replaces_nothing(store: VaultStore, monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(Path(store.vault_file).parent)
    real = pyrage.encrypt
    monkeypatch.setattr(pyrage, "encrypt", lambda data, rcpts: real(data, rcpts)[:-7])
    with pytest.raises(VaultError):
        store.update(lambda d: (ops.set_secret(d, "tok", "second-value", [], utc_now())[0], None))
    assert snapshot(Path(store.vault_file).parent) == before and not _temps(os.path.dirname(store.vault_file))


def test_a_document_that_would_not_read_back_is_never_written(store: VaultStore) -> None:
    from dataclasses import replace

    from ductile.vault.document import SecretRecord

    before = snapshot(Path(store.vault_file).parent)
    with pytest.raises(VaultError, match="bad name"):
        store.update(lambda d: (replace(d, secrets={"bad name": SecretRecord("v", (), utc_now())}), None))
    assert snapshot(Path(store.vault_file).parent) == before and not _temps(os.path.dirname(store.vault_file))


def test_a_crash_at_the_rename_leaves_the_previous_vault(store: VaultStore, monkeypatch: pytest.MonkeyPatch) -> None:
    vault_before = Path(store.vault_file).read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(VaultError, match="is full"):
        store.update(lambda d: (ops.set_secret(d, "tok", "second-value", [], utc_now())[0], None))
    monkeypatch.undo()
    assert Path(store.vault_file).read_bytes() == vault_before
    assert store.read().secrets["tok"].value == "first-value"
    assert not _temps(os.path.dirname(store.vault_file))


def test_an_unchanged_document_is_not_rewritten(store: VaultStore) -> None:
    before = snapshot(Path(store.vault_file).parent)
    store.update(lambda d: ops.grant(d, "tok", "echo"))  # already granted
    assert snapshot(Path(store.vault_file).parent) == before


def _opens(key_file: str, vault_file: str) -> bool:
    try:
        VaultStore(key_file, vault_file).read()
    except VaultError:
        return False
    return True


def test_rotate_key_re_encrypts_to_a_new_key_and_keeps_the_old_one_aside(store: VaultStore) -> None:
    old_text = Path(store.key_file).read_text()
    doc_before = store.read()
    outcome = store.rotate_key()
    assert Path(store.old_key_file).read_text() == old_text and _mode(store.old_key_file) == 0o600
    assert Path(store.key_file).read_text() != old_text and _mode(store.key_file) == 0o600
    assert outcome.public_key in Path(store.key_file).read_text()
    assert store.read() == doc_before
    os.rename(store.old_key_file, store.old_key_file + "-test")  # VaultStore.read needs a 0600 file path
    old = store.old_key_file + "-test"
    assert not _opens(old, store.vault_file) and not _opens(old, store.backup_file)
    assert _opens(store.key_file, store.backup_file)
    assert not os.path.exists(store.new_key_file)


def test_rotate_refuses_while_an_old_key_is_left_over_and_discards_an_unused_new_one(store: VaultStore) -> None:
    store.rotate_key()
    with pytest.raises(VaultError) as info:
        store.rotate_key()
    assert store.old_key_file in info.value.one_line() and "shred -u" in info.value.one_line()
    os.unlink(store.old_key_file)
    Path(store.new_key_file).write_text("leftover")  # a rotation killed while writing its new key
    store.rotate_key()  # the vault was never encrypted to it: rolled back, then a clean rotation
    assert not os.path.exists(store.new_key_file) and store.read().secrets["tok"].value == "first-value"


def test_a_rotation_that_fails_midway_leaves_a_vault_the_current_key_opens(
        store: VaultStore, monkeypatch: pytest.MonkeyPatch) -> None:
    key_before = Path(store.key_file).read_bytes()

    def broken_link(src: str, dst: str) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "link", broken_link)
    with pytest.raises(OSError):
        store.rotate_key()
    monkeypatch.undo()
    assert Path(store.key_file).read_bytes() == key_before
    assert store.read().secrets["tok"].value == "first-value"
    assert not os.path.exists(store.new_key_file) and not os.path.exists(store.old_key_file)


WRITER = textwrap.dedent("""
    import os, sys, time
    from ductile.vault import ops
    from ductile.vault.document import utc_now
    from ductile.vault.store import VaultStore
    key, vault, tag, go = sys.argv[1:5]
    while not os.path.exists(go):
        time.sleep(0.005)
    store = VaultStore(key, vault)
    for i in range(50):
        store.update(lambda d: (ops.set_secret(d, f"{tag}-{i}", f"value-{tag}-{i}", [], utc_now())[0], None))
""")


def test_two_processes_setting_50_secrets_each_lose_no_update(store: VaultStore, tmp_path: Path) -> None:
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, store.key_file, store.vault_file, tag, str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for tag in ("a", "b")]
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    secrets = store.read().secrets
    for tag in ("a", "b"):
        for i in range(50):
            assert secrets[f"{tag}-{i}"].value == f"value-{tag}-{i}"
    assert len(secrets) == 101  # the fixture's tok + 100
