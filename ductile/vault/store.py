"""The vault file: decrypt, and write so that a crash or a bad write never loses the vault.

A write goes: temp file in the same directory (0600, O_EXCL) → fsync → decrypt the temp again
and compare it with what was meant → copy the current vault to ``<vault>.bak`` (a real copy,
fsync'd) → rename the temp over the vault → fsync the directory. Until the rename nothing the
reader sees has changed, and the rename is atomic, so readers need no lock. Read-modify-write
operations hold an exclusive ``flock`` on ``<vault>.lock`` so two writers (``vault set`` while
``serve`` runs) never lose each other's update.

Key custody (``rotate_key``, ``recover``): every copy of a key or a vault is a real copy,
written and fsync'd — never a hard link. A hard link is a second name for the *same bytes*:
``shred`` on either name destroys both, and renaming one link over another is a no-op that
leaves stale files behind. At every instant of a rotation the vault opens with the key file
in place, the old key exists in ``<key>`` or ``<key>.old``, and the new one in ``<key>.new``
or ``<key>``; a crash anywhere is finished (or, before the vault was re-encrypted to the new
key, rolled back) by ``recover``, which every writer runs first under the vault lock. A
finished rotation leaves no temp file or ``.bak`` that a retired key opens.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets as _random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

import pyrage  # type: ignore[import-untyped]
from pyrage import x25519

from ductile.config.model import SecretsConfig
from ductile.durable import fsync_dir
from ductile.errors import VaultError
from ductile.vault.document import NONCE_BYTES, VaultDocument, new_document, parse, serialize
from ductile.vault.keyfile import (
    create_key_file,
    io_error,
    make_dirs_private,
    read_identity,
    write_new_key,
)

T = TypeVar("T")
MAX_VAULT_BYTES = 64 * 1024 * 1024
_TEMP = re.compile(r"^\.(?P<base>.+)\.[0-9a-f]{16}\.tmp$")
Recovered = Callable[[list[str]], None]
_RESTORE_FIX = "restore <vault>.bak (cp -p {bak} {vault}) or the backup archive; the key at {key} must match"


class VaultReader(Protocol):
    """What composing a job's secrets reads: a ``VaultStore``, or the gateway's
    ``CachedVault`` over one."""

    def read_if_present(self) -> VaultDocument | None: ...


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


def _temp_name(target: str) -> str:
    """A fresh temp path beside ``target``; ``stale_temps`` recognises the pattern."""
    directory, base = os.path.split(os.path.abspath(target))
    return os.path.join(directory, f".{base}.{_random.token_hex(8)}.tmp")


def _write_private(target: str, data: bytes, *, replace: bool) -> None:
    """Put ``data`` at ``target`` through a 0600 temp file: fsync'd, then renamed over it
    (``replace``) or linked to it (never replacing what is there). The directory is not
    fsync'd here; the caller does that once after its last rename."""
    temp = _temp_name(target)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(temp, target)
        else:
            os.link(temp, target)
    finally:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


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

    def stale_temps(self) -> list[str]:
        """Temp files an interrupted write left beside the vault, its backup or the key. They
        are only made under the vault lock, so under the lock any that exist are stale."""
        out: list[str] = []
        for target in (self.vault_file, self.backup_file, self.key_file, self.old_key_file):
            directory, base = os.path.split(os.path.abspath(target))
            try:
                names = os.listdir(directory)
            except OSError:
                continue
            out += [os.path.join(directory, n) for n in names if (m := _TEMP.match(n)) and m["base"] == base]
        return sorted(set(out))

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
        temp = _temp_name(self.vault_file)
        try:
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise io_error(exc, temp, "cannot write next to the vault",
                           "make the directory writable by the gateway account") from None
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
                self._copy_backup()
            os.replace(temp, self.vault_file)
        except OSError as exc:
            raise io_error(exc, self.vault_file, "cannot replace the vault", "check the disk (dmesg, df) and retry") from None
        finally:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
        fsync_dir(directory)

    def _copy_backup(self) -> None:
        """``<vault>.bak`` := a real, fsync'd copy of the vault as it is now."""
        _write_private(self.backup_file, _read_file(self.vault_file, MAX_VAULT_BYTES), replace=True)

    def write(self, doc: VaultDocument, identity: x25519.Identity) -> None:
        """Replace the vault with ``doc`` encrypted to ``identity``. Call with the lock held."""
        self._write(doc, [identity.to_public()], [identity])

    def update(self, mutate: Callable[[VaultDocument], tuple[VaultDocument, T]], *,
               recovered: Recovered | None = None) -> T:
        """Locked: finish any interrupted rotation (``recovered`` hears what was done), then
        read → ``mutate`` → write (skipped when ``mutate`` returns the same document)."""
        with self.locked():
            self._recover_locked(recovered)
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

    def rotate_key(self, *, recovered: Recovered | None = None) -> RotateOutcome:
        """Re-encrypt the vault to a new identity, keeping the old key as ``<key>.old``.

        Steps (each crash point is finished or rolled back by ``recover``):

            1. <key>.new   := new identity (O_EXCL, fsync)
            2. vault       := encrypted to old AND new (verified with both); .bak := copy of before
            3. <key>.old   := a copy of <key> (fsync, linked into place: complete or absent)
            4. <key>       := <key>.new (rename; the old bytes live on in <key>.old)
            5. vault       := encrypted to the new key alone (verified)
            6. .bak        := a copy of that vault; stale temp files removed

        Before step 4 the old key in ``<key>`` opens the vault; from step 2 on the new one
        does too, so ``recover`` can always finish forwards from there.
        """
        with self.locked():
            self._recover_locked(recovered)
            if os.path.lexists(self.old_key_file):
                raise VaultError(f"the old key of an earlier rotation is still here; the vault opens with {self.key_file}, "
                                 "not with it", where=self.old_key_file,
                                 fix=f"keep an offline copy if you still need it, then shred -u {self.old_key_file}, "
                                     "and rotate again")
            old = read_identity(self.key_file)
            doc = self.read(old)
            new = x25519.Identity.generate()
            write_new_key(self.new_key_file, new)
            made_old = False
            try:
                self._write(doc, [old.to_public(), new.to_public()], [old, new])
                self._copy_key_aside()
                made_old = True
                os.replace(self.new_key_file, self.key_file)
            except BaseException:
                # a failure (not a crash): undo what is ours; the vault still opens with <key>
                for leftover in ((self.old_key_file,) if made_old else ()) + (self.new_key_file,):
                    try:
                        os.unlink(leftover)
                    except OSError:
                        pass
                raise
            fsync_dir(os.path.dirname(os.path.abspath(self.key_file)))
            installed = self._finish_rotation()
        return RotateOutcome(str(installed.to_public()), self.key_file, self.old_key_file)

    def _copy_key_aside(self) -> None:
        """``<key>.old`` := a real copy of ``<key>``, complete or absent (never a link)."""
        with open(self.key_file, "rb") as fh:
            data = fh.read(1024 * 1024)
        _write_private(self.old_key_file, data, replace=False)
        fsync_dir(os.path.dirname(os.path.abspath(self.old_key_file)))

    def _finish_rotation(self) -> x25519.Identity:
        """Steps 5 and 6: the vault and its backup opened by the installed key alone."""
        installed = read_identity(self.key_file)
        doc = self.read(installed)
        self._write(doc, [installed.to_public()], [installed], backup=False)
        self._copy_backup()
        for temp in self.stale_temps():
            os.unlink(temp)
        fsync_dir(os.path.dirname(os.path.abspath(self.vault_file)))
        return installed

    # -- recovery -------------------------------------------------------------------------

    def _opens(self, identity: x25519.Identity, path: str) -> bool:
        try:
            self._decrypt(_read_file(path, MAX_VAULT_BYTES), [identity], path)
        except (VaultError, OSError):
            return False
        return True

    @staticmethod
    def _identity_at(path: str) -> x25519.Identity | None:
        """The identity in a key file ductile wrote itself (``.new``/``.old``), or None if it
        is incomplete or not a key."""
        try:
            return read_identity(path)
        except VaultError:
            return None

    def recover(self) -> list[str]:
        """Under the vault lock: finish or roll back an interrupted key rotation, drop stale
        temp files and a ``.bak`` a retired key opens. Returns what it did (empty: nothing)."""
        with self.locked():
            return self._recover_locked(None)

    def _recover_locked(self, recovered: Recovered | None) -> list[str]:
        done: list[str] = []
        for temp in self.stale_temps():
            os.unlink(temp)
            done.append(f"removed the stale temporary file {temp}")
        if os.path.lexists(self.old_key_file) and _same_file(self.old_key_file, self.key_file):
            os.unlink(self.old_key_file)  # a second name of the current key, not a copy of the old one
            done.append(f"unlinked {self.old_key_file}, a hard link to the current key")
        if os.path.lexists(self.new_key_file):
            done += self._resolve_new_key()
        if os.path.lexists(self.old_key_file) and os.path.exists(self.vault_file):
            done += self._resolve_old_key()
        done += self._resolve_backup()
        if done:
            fsync_dir(os.path.dirname(os.path.abspath(self.vault_file)))
            fsync_dir(os.path.dirname(os.path.abspath(self.key_file)))
            if recovered is not None:
                recovered(done)
        return done

    def _resolve_new_key(self) -> list[str]:
        """A rotation stopped before the new key was installed: finish it if the vault
        already opens with the new key, else discard the new key (nothing uses it)."""
        new = self._identity_at(self.new_key_file)
        if new is None or not self._opens(new, self.vault_file):
            os.unlink(self.new_key_file)  # the vault was never encrypted to it: nothing needs it
            return [f"rolled back an interrupted key rotation: removed the unused {self.new_key_file}"]
        current = read_identity(self.key_file)
        if os.path.lexists(self.old_key_file):
            old = self._identity_at(self.old_key_file)
            if old is None or str(old) != str(current):
                raise VaultError("cannot finish the interrupted key rotation: a different key is already at "
                                 f"{self.old_key_file}", where=self.old_key_file,
                                 fix=f"move {self.old_key_file} somewhere safe (it may be an older key), then "
                                     "run ductile vault recover")
        else:
            self._copy_key_aside()
        os.replace(self.new_key_file, self.key_file)
        fsync_dir(os.path.dirname(os.path.abspath(self.key_file)))
        self._finish_rotation()
        return [f"finished an interrupted key rotation: {self.key_file} is the new key, {self.old_key_file} the old one"]

    def _resolve_old_key(self) -> list[str]:
        """After the new key was installed: re-encrypt a vault the old key still opens."""
        old = self._identity_at(self.old_key_file)
        current = read_identity(self.key_file)
        if old is None or not self._opens(current, self.vault_file) or not self._opens(old, self.vault_file):
            return []  # nothing unfinished (or not ours to judge: doctor reports it)
        self._finish_rotation()
        return [f"finished an interrupted key rotation: the vault no longer opens with {self.old_key_file}"]

    def _resolve_backup(self) -> list[str]:
        """A ``.bak`` the current key does not open (a rotation stopped before step 6), or one
        the retired key still opens, is replaced by a copy of the vault — if the vault opens."""
        if not os.path.exists(self.backup_file) or not os.path.exists(self.vault_file):
            return []
        current = self._identity_at(self.key_file)
        if current is None or not self._opens(current, self.vault_file):
            return []
        old = self._identity_at(self.old_key_file) if os.path.lexists(self.old_key_file) else None
        if self._opens(current, self.backup_file) and not (old is not None and self._opens(old, self.backup_file)):
            return []
        self._copy_backup()
        return [f"replaced {self.backup_file}, which the current key did not open (or a retired key did)"]
