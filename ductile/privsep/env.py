"""The plugin environment: an allowlist, never inheritance (SPEC §5.5).

Exact names only — no ``LC_`` prefix match — so a variable cannot slip in by its shape.
Confined plugins get HOME = XDG_CACHE_HOME = their private state_dir, so caches cannot be
poisoned across accounts. Secrets never travel here; they go over stdin.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

LC_NAMES = (
    "LC_ALL", "LC_CTYPE", "LC_NUMERIC", "LC_TIME", "LC_COLLATE", "LC_MONETARY", "LC_MESSAGES",
    "LC_PAPER", "LC_NAME", "LC_ADDRESS", "LC_TELEPHONE", "LC_MEASUREMENT", "LC_IDENTIFICATION",
)
ALLOWLIST = ("PATH", "HOME", "TZ", "LANG", "LANGUAGE", "TMPDIR") + LC_NAMES
FALLBACK_PATH = "/usr/local/bin:/usr/bin:/bin"


def build_env(gateway_env: Mapping[str, str], passthrough: Iterable[str], home: str | None) -> dict[str, str]:
    """Allowlisted and passthrough names present in ``gateway_env``; HOME/XDG_CACHE_HOME
    rebased to ``home`` when given. PATH always exists (a fixed system default if unset)."""
    names = set(ALLOWLIST) | {n.strip() for n in passthrough if n and n.strip()}
    env = {k: v for k, v in gateway_env.items() if k in names}
    env.setdefault("PATH", FALLBACK_PATH)
    if home is not None:
        env["HOME"] = home
        env["XDG_CACHE_HOME"] = home
    return env
