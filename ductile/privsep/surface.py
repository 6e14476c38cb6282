"""Which paths are secret (SPEC §5.6), derived from the loaded config. Pure.

Anything that holds or unlocks secret material belongs here: the config directory and
every config file read, the state database with its WAL/SHM/journal companions, the vault
and its backup, the age key, and the key's directory when it is a dedicated ``secret/``.
"""

from __future__ import annotations

import posixpath

from ductile.config import LoadedConfig
from ductile.privsep.reconcile import AccountDir, SecretPath

DB_COMPANIONS = ("-wal", "-shm", "-journal")


def secret_surface(loaded: LoadedConfig) -> list[SecretPath]:
    cfg = loaded.config
    out = [SecretPath(loaded.directory, "config directory", True)]
    out += [SecretPath(f, "config file", False) for f in loaded.files]
    out.append(SecretPath(cfg.state.path, "state database", False))
    out += [SecretPath(cfg.state.path + sfx, "state database journal", False) for sfx in DB_COMPANIONS]
    out.append(SecretPath(cfg.secrets.vault_file, "vault", False))
    out.append(SecretPath(cfg.secrets.vault_file + ".bak", "vault backup", False))
    key_dir = posixpath.dirname(cfg.secrets.age_key_file)
    if posixpath.basename(key_dir) == "secret":
        out.append(SecretPath(key_dir, "age key directory", True))
    out.append(SecretPath(cfg.secrets.age_key_file, "age key", False))
    seen: set[str] = set()
    return [s for s in out if not (s.path in seen or seen.add(s.path))]  # type: ignore[func-returns-value]


def account_dirs(loaded: LoadedConfig) -> list[AccountDir]:
    return [AccountDir(name, a.uid, a.gid, a.state_dir) for name, a in sorted(loaded.config.accounts.items())]
