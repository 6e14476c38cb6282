"""Secret zero on disk: the age identity file, its mode and owner rules, creation and parsing.

The rule (``key_file_problem``) is pure so doctor and the tests share it; reading checks the
*opened* descriptor (fstat), so the file judged is the file read. Key text never reaches an
error message: pyrage's own errors are replaced, not chained.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from pyrage import IdentityError, x25519  # type: ignore[import-untyped]

from ductile.durable import fsync_dir
from ductile.errors import VaultError
from ductile.state.faults import space_or_mount
from ductile.vault.document import utc_now

KEY_PREFIX = "AGE-SECRET-KEY-1"


@dataclass(frozen=True)
class KeyStat:
    """The facts the key rule needs, taken from fstat of the open file."""

    mode: int
    uid: int


def key_file_problem(path: str, facts: KeyStat, euid: int, as_owner: str = "") -> VaultError | None:
    """Refuse a key other accounts could read or that belongs to someone else.

    ``as_owner``: this same command run as the key's owner (``runuser -u ductile -- ductile
    …``). Root must never be told to chown the key to itself: the gateway could no longer
    read it. Root runs the command as the owner instead.
    """
    if not stat.S_ISREG(facts.mode):
        return VaultError("the age key is not a regular file", where=path,
                          fix=f"point secrets.age_key_file at the key file itself, not {path}")
    loose = stat.S_IMODE(facts.mode) & 0o077
    if loose:
        return VaultError(
            f"the age key has mode {stat.S_IMODE(facts.mode):04o}; secret zero must not be readable or writable "
            "by group or other (mode 0600)", where=path,
            fix=f"chmod 0600 {path}, then rotate it (ductile vault rotate-key): it may have been read")
    if facts.uid != euid:
        return VaultError(
            f"the age key is owned by uid {facts.uid}, not by uid {euid} that is running ductile; "
            "secret zero must belong to the gateway account", where=path,
            fix=(f"run it as the key's owner: {as_owner or f'uid {facts.uid}'}" if euid == 0 else
                 f"run it as the key's owner ({as_owner or f'uid {facts.uid}'}); or, only if uid {euid} is the "
                 f"gateway, give it the key as root: chown {euid} {path}"))
    return None


def parse_identity_text(text: str, path: str) -> str:
    """The one ``AGE-SECRET-KEY-1`` line of a key file (age-keygen adds ``#`` comment lines)."""
    keys = [line.strip() for line in text.splitlines() if line.strip().startswith(KEY_PREFIX)]
    if not keys:
        raise VaultError(f"no {KEY_PREFIX}... line in the age key file", where=path,
                         fix="point secrets.age_key_file at an age-keygen identity, or run ductile vault init")
    if len(keys) > 1:
        raise VaultError(f"the age key file holds {len(keys)} identities; ductile uses exactly one", where=path,
                         fix="keep one AGE-SECRET-KEY-1 line in the file")
    return keys[0]


def _identity(line: str, path: str) -> x25519.Identity:
    try:
        return x25519.Identity.from_str(line)
    except IdentityError:
        pass
    raise VaultError(f"the {KEY_PREFIX}... line is not a valid age x25519 identity", where=path,
                     fix="restore the key from your offline copy; without it the vault cannot be opened")


def _as_owner(uid: int) -> str:
    """This command, run as ``uid`` from a root shell (runuser by name, setpriv by number)."""
    import pwd
    import shlex

    from ductile.hints import as_user, this_command

    try:
        return as_user(pwd.getpwuid(uid).pw_name, this_command())
    except KeyError:
        return shlex.join(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *this_command()])


def read_identity(path: str) -> x25519.Identity:
    """Open, check (mode 0600, owned by euid, regular file) and parse the key at ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise VaultError("the age key does not exist", where=path,
                         fix="run ductile vault init, or point secrets.age_key_file at the key") from None
    except OSError as exc:
        raise VaultError(f"cannot open the age key: {exc.strerror}", where=path,
                         fix="run ductile as the account that owns the key") from None
    try:
        st = os.fstat(fd)
        euid = os.geteuid()
        problem = key_file_problem(path, KeyStat(st.st_mode, st.st_uid), euid,
                                   _as_owner(st.st_uid) if st.st_uid != euid else "")
        if problem is not None:
            raise problem
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
            if len(data) > 1024 * 1024:
                raise VaultError("the age key file is larger than 1 MiB", where=path,
                                 fix="point secrets.age_key_file at an age-keygen identity file")
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise VaultError("the age key file is not UTF-8 text", where=path,
                         fix="point secrets.age_key_file at an age-keygen identity file") from None
    return _identity(parse_identity_text(text, path), path)


def io_error(err: OSError, path: str, doing: str, fix: str) -> VaultError:
    """A failed write near the key or vault: a full disk or read-only mount gets its own fix
    (never "chown" for a disk that is merely full); anything else gets ``fix``."""
    fault = space_or_mount(err, path, doing)
    if fault is not None:
        return VaultError(f"{fault.message}; nothing was replaced", where=path, fix=fault.fix)
    return VaultError(f"{doing}: {err.strerror}", where=path, fix=fix)


def make_dirs_private(directory: str) -> None:
    """Create ``directory`` and missing parents as 0700 (never widening an existing one)."""
    missing: list[str] = []
    probe = os.path.abspath(directory)
    while not os.path.isdir(probe):
        missing.append(probe)
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            if not os.path.isdir(d):
                raise VaultError("exists but is not a directory", where=d, fix="move it out of the way") from None
            continue
        os.chmod(d, 0o700)  # mkdir's mode is filtered by the umask; make it exact


def key_file_text(identity: x25519.Identity) -> str:
    """The age-keygen layout, so ``age -d -i`` and ``age-keygen -y`` accept the file."""
    return f"# created: {utc_now()}\n# public key: {identity.to_public()}\n{identity}\n"


def write_new_key(path: str, identity: x25519.Identity) -> None:
    """Write ``identity`` to ``path``: exclusive create, 0600, fsync file and directory."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise VaultError("refusing to overwrite an existing file with a new age key", where=path,
                         fix=f"move {path} aside if it is stale (shred -u {path} if it is an old key)") from None
    except OSError as exc:
        raise io_error(exc, path, "cannot create the age key",
                       "create the directory writable by the gateway account, or fix secrets.age_key_file") from None
    try:
        os.fchmod(fd, 0o600)
        data = key_file_text(identity).encode("ascii")
        if os.write(fd, data) != len(data):
            raise OSError(28, "No space left on device")  # a short write of 100 bytes: the disk is full
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        os.unlink(path)
        raise io_error(exc, path, "cannot write the age key", "check the disk (dmesg, df)") from None
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    fsync_dir(directory)


def create_key_file(path: str) -> x25519.Identity:
    """A new x25519 identity at ``path``; the directory is made 0700 if it did not exist."""
    make_dirs_private(os.path.dirname(os.path.abspath(path)))
    identity = x25519.Identity.generate()
    write_new_key(path, identity)
    return identity
