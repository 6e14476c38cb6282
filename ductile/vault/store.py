"""The vault file: decrypt, and write so that a crash or a bad write never loses the vault.

A write goes: temp file in the same directory (0600, O_EXCL) → fsync → decrypt the temp again
and compare it with what was meant → hard-link the current vault to ``<vault>.bak`` → rename the
temp over the vault → fsync the directory. Until the rename nothing the reader sees has changed,
and the rename is atomic, so readers need no lock. Read-modify-write operations hold an
exclusive ``flock`` on ``<vault>.lock`` so two writers (``vault set`` while ``serve`` runs)
never lose each other's update.
"""

from __future__ import annotations

import fcntl
import os
import secrets as _random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import pyrage  # type: ignore[import-untyped]
from pyrage import x25519

from ductile.config.model import SecretsConfig
from ductile.errors import VaultError
from ductile.vault.document import NONCE_BYTES, VaultDocument, new_document, parse, serialize
from ductile.vault.keyfile import create_key_file, fsync_dir, make_dirs_private, read_identity, write_new_key

T = TypeVar("T")
MAX_VAULT_BYTES = 64 * 1024 * 1024
_RESTORE_FIX = "restore <vault>.bak (cp -p {bak} {vault}) or the backup archive; the key at {key} must match"


@dataclass(frozen=True)
class InitOutcome:
    key_created: bool
    public_key: str
    key_file: str
    vault_file: str


@dataclass(frozen=True)
class RotateOutcome:
    public_key: str
    key_file: str
    old_key_file: str


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_file(path: str, limit: int) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise VaultError(f"the vault is larger than {limit} bytes", where=path, fix="point secrets.vault_file at the vault")
    return data


@dataclass(frozen=True)
class VaultStore:
    """One vault file and the age key that opens it (``secrets.vault_file``, ``secrets.age_key_file``)."""

    key_file: str
    vault_file: str

    @classmethod
    def from_config(cls, secrets: SecretsConfig) -> VaultStore:
        return cls(key_file=secrets.age_key_file, vault_file=secrets.vault_file)

    @property
    def backup_file(self) -> str:
        return self.vault_file + ".bak"

    @property
    def lock_file(self) -> str:
        return self.vault_file + ".lock"

    @property
    def old_key_file(self) -> str:
        return self.key_file + ".old"

    @property
    def new_key_file(self) -> str:
        return self.key_file + ".new"

    def exists(self) -> bool:
        return os.path.lexists(self.vault_file)

    # -- reading ---------------------------------------------------------------------------

    def _decrypt(self, data: bytes, identities: Sequence[x25519.Identity], where: str) -> bytes:
        fix = _RESTORE_FIX.format(bak=self.backup_file, vault=self.vault_file, key=self.key_file)
        if not data:
            raise VaultError("the vault file is empty (truncated)", where=where, fix=fix)
        try:
            return bytes(pyrage.decrypt(data, list(identities)))
        except pyrage.DecryptError as exc:
            if "no matching keys" in str(exc).lower():
                raise VaultError(f"the age key {self.key_file} does not open this vault (wrong key, or a damaged header)",
                                 where=where, fix=f"point secrets.age_key_file at the key the vault was made with, or {fix}"
                                 ) from None
            raise VaultError(f"the vault cannot be decrypted: truncated or corrupted ({exc})", where=where, fix=fix) from None

    def read(self, identity: x25519.Identity | None = None) -> VaultDocument:
        """Decrypt and parse the vault. Any problem is one VaultError naming the file."""
        identity = identity if identity is not None else read_identity(self.key_file)
        try:
            data = _read_file(self.vault_file, MAX_VAULT_BYTES)
        except FileNotFoundError:
            raise VaultError("the vault does not exist", where=self.vault_file,
                             fix="create it with ductile vault init, or fix secrets.vault_file") from None
        except OSError as exc:
            raise VaultError(f"cannot read the vault: {exc.strerror}", where=self.vault_file,
                             fix="run ductile as the account that owns the vault") from None
        return parse(self._decrypt(data, [identity], self.vault_file), self.vault_file)

    def read_if_present(self) -> VaultDocument | None:
        """None when there is no vault file at all (compose treats that as 'no vault')."""
        return self.read() if self.exists() else None

    # -- locking ---------------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the exclusive advisory lock that serialises every writer of this vault."""
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise VaultError("the vault directory does not exist", where=os.path.dirname(self.vault_file),
                             fix="run ductile vault init, or fix secrets.vault_file") from None
        except OSError as exc:
            raise VaultError(f"cannot open the vault lock: {exc.strerror}", where=self.lock_file,
                             fix="run ductile as the account that owns the vault directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    # -- writing ---------------------------------------------------------------------------

    def _write(self, doc: VaultDocument, recipients: Sequence[x25519.Recipient],
               verifiers: Sequence[x25519.Identity], *, backup: bool = True) -> None:
        """Encrypt ``doc`` to ``recipients`` and replace the vault, verified by every verifier."""
        plaintext = serialize(doc)
        ciphertext = pyrage.encrypt(plaintext, list(recipients))
        directory = os.path.dirname(os.path.abspath(self.vault_file))
        base = os.path.basename(self.vault_file)
        temp = os.path.join(directory, f".{base}.{_random.token_hex(8)}.tmp")
        try:
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise VaultError(f"cannot write next to the vault: {exc.strerror}", where=directory,
                             fix="make the directory writable by the gateway account") from None
        try:
            try:
                os.fchmod(fd, 0o600)
                _write_all(fd, ciphertext)
                os.fsync(fd)
                written = os.pread(fd, len(ciphertext) + 1, 0)
            finally:
                os.close(fd)
            parse(plaintext, temp)  # never write a document that could not be read back
            for identity in verifiers:
                if self._decrypt(written, [identity], temp) != plaintext:
                    raise VaultError("the freshly written vault does not read back as written; nothing was replaced",
                                     where=self.vault_file, fix="check the disk (dmesg, df) and retry")
            if backup and os.path.exists(self.vault_file):
                self._link_over(self.vault_file, self.backup_file)
            os.replace(temp, self.vault_file)
        except BaseException:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
            raise
        fsync_dir(directory)

    def _link_over(self, source: str, target: str) -> None:
        """Make ``target`` another name of ``source``'s bytes, atomically (link to temp, rename)."""
        directory = os.path.dirname(os.path.abspath(target))
        temp = os.path.join(directory, f".{os.path.basename(target)}.{_random.token_hex(8)}.tmp")
        os.link(source, temp)
        try:
            os.replace(temp, target)
        except BaseException:
            os.unlink(temp)
            raise

    def write(self, doc: VaultDocument, identity: x25519.Identity) -> None:
        """Replace the vault with ``doc`` encrypted to ``identity``. Call with the lock held."""
        self._write(doc, [identity.to_public()], [identity])

    def update(self, mutate: Callable[[VaultDocument], tuple[VaultDocument, T]]) -> T:
        """Locked read → ``mutate`` → write (skipped when ``mutate`` returns the same document)."""
        with self.locked():
            identity = read_identity(self.key_file)
            before = self.read(identity)
            after, result = mutate(before)
            if after is not before:
                self.write(after, identity)
            return result

    # -- whole-vault operations ------------------------------------------------------------

    def initialize(self) -> InitOutcome:
        """Create the vault (and the key if there is none) holding a fresh 32-byte nonce."""
        make_dirs_private(os.path.dirname(os.path.abspath(self.vault_file)))
        with self.locked():
            if self.exists():
                raise VaultError("a vault already exists here", where=self.vault_file,
                                 fix="nothing to do; to start over, move the vault and its key aside first")
            if os.path.lexists(self.key_file):
                identity, created = read_identity(self.key_file), False
            else:
                identity, created = create_key_file(self.key_file), True
            self.write(new_document(os.urandom(NONCE_BYTES)), identity)
        return InitOutcome(created, str(identity.to_public()), self.key_file, self.vault_file)

    def rotate_key(self) -> RotateOutcome:
        """Re-encrypt the vault to a new identity, keeping the old key as ``<key>.old``.

        Crash-safe ordering: the vault is first encrypted to *both* keys, so whichever key file
        a crash leaves in place opens it; only after the new key is installed and opens the
        vault is it re-encrypted to the new key alone (and ``.bak`` replaced by that copy).
        """
        with self.locked():
            for leftover, what in ((self.new_key_file, "an interrupted rotation left a new key"),
                                   (self.old_key_file, "the old key of an earlier rotation is still here")):
                if os.path.lexists(leftover):
                    raise VaultError(f"{what}; the vault still opens with {self.key_file}", where=leftover,
                                     fix=f"shred -u {leftover}, then rotate again")
            old = read_identity(self.key_file)
            doc = self.read(old)
            new = x25519.Identity.generate()
            write_new_key(self.new_key_file, new)
            try:
                self._write(doc, [old.to_public(), new.to_public()], [old, new])
                os.link(self.key_file, self.old_key_file)
                fsync_dir(os.path.dirname(os.path.abspath(self.key_file)))
            except BaseException:
                os.unlink(self.new_key_file)
                raise
            os.replace(self.new_key_file, self.key_file)
            fsync_dir(os.path.dirname(os.path.abspath(self.key_file)))
            installed = read_identity(self.key_file)
            self._write(doc, [installed.to_public()], [installed], backup=False)
            self._link_over(self.vault_file, self.backup_file)
            fsync_dir(os.path.dirname(os.path.abspath(self.vault_file)))
        return RotateOutcome(str(installed.to_public()), self.key_file, self.old_key_file)
