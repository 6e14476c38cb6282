"""The gateway's reader of its vault: decrypt when the key or the vault changed, else give
back the document decrypted for an earlier job.

Why: every job used to read the age key and decrypt the whole vault (twice with a lock in
use: the lock's nonce, then the plugin's secrets), about half a millisecond of a busy
gateway's time per job, holding the GIL while pyrage decrypts.

Why it stays as fresh as before: before every read both files are stat'ed, and the
document is reused only when both are still exactly what was decrypted — device, inode,
size, mtime and ctime to the nanosecond, mode and owner. Every write ductile makes to the
vault or the key (``vault set``, ``grant``, ``revoke``, ``rotate-key``, a restore) writes a
temp file and renames it over the old one: a new inode, seen by the next job exactly as
when every job decrypted. A change made in place (an editor, ``chmod``) changes ctime,
which the kernel sets and no caller can. Where a file's timestamps are too close to the
read to tell two writes in one clock tick apart (``RACY``: the file changed in the last
two seconds), nothing is kept and the next job decrypts again, as git does with racily
clean files. A key whose mode or owner changed is read (and refused) again.

What is kept is what the gateway already held for the length of every job, now between
jobs too, in the memory of a process plugins cannot read (another uid, no ptrace, no
``/proc/<pid>/mem``); the gateway holds its API token values for its whole life anyway.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from ductile.vault.document import VaultDocument
from ductile.vault.store import VaultStore

RACY_NS = 2_000_000_000
Facts = tuple[int, int, int, int, int, int, int]


def file_facts(path: str) -> Facts:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid)


def racy(facts: tuple[Facts, ...], now_ns: int) -> bool:
    """Did any of the files change too recently for its timestamps to tell writes apart?"""
    return any(now_ns - max(f[3], f[4]) < RACY_NS for f in facts)


class CachedVault:
    """Reads ``store`` for the jobs of one gateway process (thread-safe)."""

    def __init__(self, store: VaultStore, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.store = store
        self.clock_ns = clock_ns
        self._lock = threading.Lock()
        self._seen: tuple[tuple[Facts, Facts], VaultDocument] | None = None
        self.decrypted = 0   # how many reads decrypted (the rest were reused)

    def read(self) -> VaultDocument:
        """The document as the files are now. Problems are the store's VaultErrors."""
        try:
            before: tuple[Facts, Facts] | None = (file_facts(self.store.key_file), file_facts(self.store.vault_file))
        except OSError:
            before = None  # the store's read says what is wrong
        with self._lock:
            seen = self._seen
        if before is not None and seen is not None and seen[0] == before:
            return seen[1]
        doc = self.store.read()
        with self._lock:
            self.decrypted += 1
            if before is not None and not racy(before, self.clock_ns()):
                self._seen = (before, doc)
        return doc

    def read_if_present(self) -> VaultDocument | None:
        """None when there is no vault file at all (compose treats that as 'no vault')."""
        return self.read() if self.store.exists() else None
