"""Secret zero as backup and restore see it: which bytes are the age key, wherever they are,
and the pairing code that says which key opens an archive. Pure.

A file is never archived when any of these holds (``SecretZero.reason``, ``secret_place``):

    identity   it *is* the key: the same device and inode as ``secrets.age_key_file`` (or
               the file a symlink there points at), or as the leftovers of a rotation,
               ``<key>.old`` and ``<key>.new`` — so a hard link under another name is caught
    content    its bytes equal one of those files' bytes: a renamed or copied key
    material   it contains an age secret key anywhere (``AGE-SECRET-KEY-1`` + 58 bech32
               characters, either case): a copy with other comments, a key pasted into a
               note, or a key of some other vault
    place      it lies under a directory named ``secret/`` (``secret_place``)

Symlinks are never archived at all (restore refuses links), so a link to the key is
excluded as a link whatever it points at. What this cannot see: a key transformed before
it was written (base64, encrypted, split); nothing short of not storing it can.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

# bech32 data characters; age keys are 74 characters: the 16-character prefix + 58
KEY_MATERIAL = re.compile(rb"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}", re.IGNORECASE)
KEY_LENGTH = 74
SECRET_DIR = "secret"
# Unambiguous when read aloud or written by hand: no I/1/L, no O/0.
PAIRING_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
PAIRING_LENGTH = 5


@dataclass(frozen=True)
class KeyFile:
    """What the backup knows about one key file (the key or a rotation leftover)."""

    path: str
    label: str                                # "secrets.age_key_file", "the rotated key (.old)", ...
    identities: frozenset[tuple[int, int]]    # (dev, ino) of the path and of what it points at
    sha256: str | None                        # of its bytes, when it could be read


@dataclass(frozen=True)
class SecretZero:
    """Every key file the config implies, and the pairing code of the current key."""

    keys: tuple[KeyFile, ...]
    pairing_code: str | None

    def reason(self, *, identity: tuple[int, int] | None, sha256: str | None, material: bool) -> str | None:
        """Why a file with these facts is secret zero, or None."""
        for key in self.keys:
            if identity is not None and identity in key.identities:
                return f"secret zero: this is {key.label} ({key.path}); never archived, keep it out of band"
        for key in self.keys:
            if sha256 is not None and key.sha256 is not None and sha256 == key.sha256:
                return f"secret zero: a copy of {key.label} ({key.path}), byte for byte; never archived"
        if material:
            return "holds an age secret key (AGE-SECRET-KEY-1...); key material is never archived"
        return None


def secret_place(path: str) -> bool:
    """``path`` is a ``secret/`` directory or lies below one."""
    return SECRET_DIR in path.strip("/").split("/")


class MaterialScanner:
    """Streaming search for age key material: feed chunks, read ``found``. A key split
    across two chunks is still found (the last 73 bytes are carried over)."""

    def __init__(self) -> None:
        self._tail = b""
        self.found = False

    def feed(self, chunk: bytes) -> None:
        if self.found:
            return
        window = self._tail + chunk
        if KEY_MATERIAL.search(window):
            self.found = True
            return
        self._tail = window[-(KEY_LENGTH - 1):]


def has_key_material(data: bytes) -> bool:
    return KEY_MATERIAL.search(data) is not None


def pairing_code(public_key: str) -> str:
    """Five characters derived from the age *public* key: every archive made while that
    key opens the vault carries the same code, and it changes when the key is rotated.
    Written next to the offline key, it says which key opens which archive; it reveals
    nothing about the key (the public key is public, and this is a hash of it)."""
    digest = int.from_bytes(hashlib.sha256(b"ductile backup pairing code\0" + public_key.encode()).digest(), "big")
    out = []
    for _ in range(PAIRING_LENGTH):
        digest, rest = divmod(digest, len(PAIRING_ALPHABET))
        out.append(PAIRING_ALPHABET[rest])
    return "".join(out)
