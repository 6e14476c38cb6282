"""How many jobs of one plugin may run at once — the one rule serve's claims and ``plugin
run`` both apply, so a plugin that is not safe to run twice is never run twice by either:

    manifest concurrency_safe   parallelism     limit
    true (default)              unset           none
    false                       unset           1
    any                         N               N     (the operator decided; doctor warns
                                                       when it overrides concurrency_safe: false)
"""

from __future__ import annotations

from ductile.runtime.boot import Runtime


def limit_of(concurrency_safe: bool, parallelism: int | None = None) -> int | None:
    if parallelism is not None:
        return parallelism
    return None if concurrency_safe else 1


def concurrency_limit(runtime: Runtime, plugin: str) -> int | None:
    """The cap for ``plugin`` in this runtime (None: no cap, or not a discovered plugin)."""
    found = runtime.plugins.get(plugin)
    if found is None:
        return None
    pc = runtime.config.plugins.get(plugin)
    return limit_of(found.manifest.concurrency_safe, pc.parallelism if pc is not None else None)
