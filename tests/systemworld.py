"""A throwaway host for the system backup/restore tests: a gateway user (a private uid with
no passwd entry), its config, key, vault, state database and plugin tree, optionally two
accounts — and every way secret zero could sneak into an archive, planted on purpose."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from wallworld import free_ids

PYTHON = sys.executable
KEY_MATERIAL = re.compile(rb"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}", re.IGNORECASE)
ECHO = textwrap.dedent('''\
    #!/usr/bin/python3
    import json, sys
    req = json.load(sys.stdin)
    json.dump({"status": "ok", "result": {"state": req.get("state")}}, sys.stdout)
''')


@dataclass
class SysWorld:
    base: Path
    gw: int                          # the gateway user's uid (and gid)
    key_place: str                   # secret | config | plugin
    accounts: dict[str, int] = field(default_factory=dict)
    said: dict[str, str] = field(default_factory=dict)   # stdout of the vault commands that made it

    @property
    def etc(self) -> Path:
        return self.base / "etc"

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def plugins(self) -> Path:
        return self.base / "plugins"

    @property
    def db(self) -> Path:
        return self.state / "ductile.db"

    @property
    def vault(self) -> Path:
        return self.state / "vault.age"

    @property
    def key(self) -> Path:
        return {"secret": self.etc / "secret" / "age.key", "config": self.etc / "age.key",
                "plugin": self.plugins / "keys" / "age.key"}[self.key_place]

    def account_dir(self, name: str) -> Path:
        return self.state / "accounts" / name

    def config_text(self) -> str:
        accts = "".join(f"  {n}: {{uid: {u}, gid: {u}, state_dir: {self.account_dir(n)}}}\n"
                        for n, u in self.accounts.items())
        return textwrap.dedent(f"""\
            state: {{path: {self.db}}}
            secrets: {{age_key_file: {self.key}, vault_file: {self.vault}}}
            plugin_roots: [{self.plugins}]
            api: {{enabled: false}}
            plugins:
              echo: {{}}
            """) + (f"accounts:\n{accts}" if accts else "")

    def run(self, *args: str, root: bool = False, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """The real CLI as the gateway user (no capabilities at all), or as root."""
        cmd = [PYTHON, "-m", "ductile", *args]
        if not root:
            cmd = ["setpriv", f"--reuid={self.gw}", f"--regid={self.gw}", "--clear-groups", "--"] + cmd
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "NO_COLOR": "1", "TZ": "UTC"}
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd="/", input=input)

    def own(self, path: Path, uid: int | None = None) -> None:
        os.chown(path, self.gw if uid is None else uid, self.gw if uid is None else uid, follow_symlinks=False)


def _mkdir(path: Path, mode: int, uid: int = 0) -> None:
    path.mkdir(mode=mode, parents=False)
    os.chmod(path, mode)
    os.chown(path, uid, uid)


def make_sys_world(key_place: str = "secret", accounts: tuple[str, ...] = ()) -> SysWorld:
    ids = free_ids(len(accounts) + 1)
    base = Path(tempfile.mkdtemp(prefix="ductile-sys-", dir="/tmp"))
    os.chmod(base, 0o711)
    w = SysWorld(base, ids[-1], key_place, dict(zip(accounts, ids)))
    _mkdir(w.etc, 0o700, w.gw)
    _mkdir(w.state, 0o711, w.gw)
    _mkdir(w.plugins, 0o755)
    if key_place == "secret":
        _mkdir(w.etc / "secret", 0o700, w.gw)
    if key_place == "plugin":
        _mkdir(w.plugins / "keys", 0o700, w.gw)
    if accounts:
        _mkdir(w.state / "accounts", 0o711, w.gw)
        for name, uid in w.accounts.items():
            _mkdir(w.account_dir(name), 0o700, uid)
            (w.account_dir(name) / "cache.txt").write_text(f"{name} keeps this")
            w.own(w.account_dir(name) / "cache.txt", uid)
    echo = w.plugins / "echo"
    _mkdir(echo, 0o755)
    (echo / "manifest.yaml").write_text("name: echo\nprotocol: 2\nentrypoint: run\ncommands: [{name: poll, type: read}]\n")
    (echo / "run").write_text(ECHO)
    os.chmod(echo / "run", 0o755)
    (w.etc / "config.yaml").write_text(w.config_text())
    w.own(w.etc / "config.yaml")
    os.chmod(w.etc / "config.yaml", 0o600)
    for args in (("vault", "init"), ("vault", "rotate-key")):  # rotate: the .old key is a hazard too
        proc = w.run(*args, "--config", str(w.etc))
        assert proc.returncode == 0, proc.stderr
        w.said[args[1]] = proc.stdout
    assert w.db.exists() and Path(str(w.key) + ".old").exists()
    return w


def plant_hazards(w: SysWorld) -> dict[str, str]:
    """Every disguise of secret zero this test can think of; returns {path: what it is}."""
    key = w.key.read_bytes()
    old = Path(str(w.key) + ".old").read_bytes()
    echo = w.plugins / "echo"
    planted = {
        echo / "renamed.txt": "a renamed copy", w.etc / "key-backup.txt": "a copy in the config dir",
        echo / "old-copy": "a copy of the rotated key",
    }
    (echo / "renamed.txt").write_bytes(key)
    (w.etc / "key-backup.txt").write_bytes(key)
    (echo / "old-copy").write_bytes(old)
    line = next(ln for ln in key.splitlines() if ln.startswith(b"AGE-SECRET-KEY-1"))
    (echo / "notes.md").write_bytes(b"# setup notes\nthe key is " + line.lower() + b" do not share\n")
    planted[echo / "notes.md"] = "key material in a note"
    os.symlink(w.key, echo / "key-link")
    planted[echo / "key-link"] = "a symlink to the key"
    os.link(w.key, echo / "hardlink")
    planted[echo / "hardlink"] = "a hard link to the key"
    (echo / "secret").mkdir()
    (echo / "secret" / "token").write_text("s3cr3t")
    planted[echo / "secret"] = "a secret/ directory"
    for name, uid in w.accounts.items():
        (w.account_dir(name) / "stolen").write_bytes(key)
        w.own(w.account_dir(name) / "stolen", uid)
        planted[w.account_dir(name) / "stolen"] = "a copy in an account's directory"
    return {str(p): what for p, what in planted.items()}


def archive_members(path: Path) -> dict[str, bytes | None]:
    """name -> bytes (None for directories); fails on anything else."""
    out: dict[str, bytes | None] = {}
    with tarfile.open(path, "r:gz") as tar:
        for m in tar.getmembers():
            assert m.isfile() or m.isdir(), f"{m.name} is neither a file nor a directory"
            out[m.name.rstrip("/")] = tar.extractfile(m).read() if m.isfile() else None  # type: ignore[union-attr]
    return out


def manifest_of(path: Path) -> dict:  # type: ignore[type-arg]
    import yaml

    data = archive_members(path)["BACKUP_MANIFEST.txt"]
    assert data is not None
    return yaml.safe_load(io.BytesIO(data))


def destroy(w: SysWorld) -> None:
    shutil.rmtree(w.base, ignore_errors=True)
