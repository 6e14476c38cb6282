"""The plugin environment: an allowlist, never inheritance (SPEC §5.5, §5.9).

Exact names only — no ``LC_`` prefix match — so a variable cannot slip in by its shape.
The gateway sets five names itself, whatever its own environment holds:

* ``HOME`` = ``XDG_CACHE_HOME`` = the account's private state_dir, so caches cannot be
  poisoned across accounts;
* ``TMPDIR`` = ``<state_dir>/tmp`` (0700, made by the trampoline after the drop): the
  shared ``/tmp`` is a channel between accounts;
* ``PYTHONNOUSERSITE=1``: a ``.pth`` file an account planted in its ``~/.local`` must not
  run inside the next Python plugin of that account;
* ``PATH`` = ``service.plugin_path`` without the directories the account cannot traverse
  (a gateway PATH with ``/root/...`` in it made ``subprocess`` raise PermissionError
  instead of "not found" inside plugins).

Secrets never travel here; they go over stdin.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable, Mapping, Sequence

LC_NAMES = (
    "LC_ALL", "LC_CTYPE", "LC_NUMERIC", "LC_TIME", "LC_COLLATE", "LC_MONETARY", "LC_MESSAGES",
    "LC_PAPER", "LC_NAME", "LC_ADDRESS", "LC_TELEPHONE", "LC_MEASUREMENT", "LC_IDENTIFICATION",
)
ALLOWLIST = ("PATH", "HOME", "TZ", "LANG", "LANGUAGE", "TMPDIR") + LC_NAMES
SET_BY_GATEWAY = ("PATH", "HOME", "XDG_CACHE_HOME", "TMPDIR", "PYTHONNOUSERSITE")
FALLBACK_PATH = "/usr/local/bin:/usr/bin:/bin"
PRIVATE_TMP = "tmp"


def build_env(gateway_env: Mapping[str, str], passthrough: Iterable[str], home: str | None,
              path: str = FALLBACK_PATH) -> dict[str, str]:
    """Allowlisted and passthrough names present in ``gateway_env``, then the names the
    gateway sets itself (which passthrough cannot override). ``home``: the plugin's
    working directory (its state_dir when confined)."""
    names = (set(ALLOWLIST) | {n.strip() for n in passthrough if n and n.strip()}) - set(SET_BY_GATEWAY)
    env = {k: v for k, v in gateway_env.items() if k in names}
    env["PATH"] = path
    env["PYTHONNOUSERSITE"] = "1"
    if home is not None:
        env["HOME"] = home
        env["XDG_CACHE_HOME"] = home
        env["TMPDIR"] = home.rstrip("/") + "/" + PRIVATE_TMP
    return env


DirFacts = tuple[int, int, int]  # (st_mode, st_uid, st_gid) of one directory


def can_traverse(uid: int, gid: int, chain: Sequence[DirFacts]) -> bool:
    """May ``uid``/``gid`` (no supplementary groups: the drop clears them) search every
    directory in ``chain`` (from ``/`` down to the directory itself)?"""
    for mode, owner, group in chain:
        if not stat.S_ISDIR(mode):
            return False
        bit = stat.S_IXUSR if owner == uid else stat.S_IXGRP if group == gid else stat.S_IXOTH
        if not mode & bit:
            return False
    return bool(chain)


def plugin_path(dirs: Sequence[str], uid: int | None, gid: int | None,
                chains: Mapping[str, Sequence[DirFacts]]) -> str:
    """``service.plugin_path`` as the PATH of one account: directories that do not exist
    (no chain) or that it cannot traverse are left out. ``uid`` None: the gateway itself."""
    keep = []
    for d in dirs:
        chain = chains.get(d)
        if not chain:
            continue
        if uid is not None and gid is not None and not can_traverse(uid, gid, chain):
            continue
        keep.append(d)
    return ":".join(keep)
