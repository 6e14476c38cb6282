"""A strict reader for the archives ``system backup`` writes: gzip, POSIX ustar headers,
pax extended headers, regular files and directories. Everything else is refused.

Why not ``tarfile``: it is made to accept every dialect, and it reads a pax or GNU
long-name header of any declared size into memory before anyone can look at it, so a
hostile archive can exhaust memory before a single check runs. Here every size is bounded
*before* it is read (a pax header at most 64 KiB, a member at most what ``Limits`` allows),
every header's checksum is verified, and links, devices, FIFOs, sparse files, GNU headers
and global pax headers are refused by type, with the member's name. Decompression is
pulled by those bounded reads, so a gzip bomb costs at most the bytes the bounds allow.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ductile.system.manifest import Limits, RestoreRefused

BLOCK = 512
MAX_PAX = 64 * 1024
CHUNK = 1 << 20
TYPES = {
    b"1": "a hard link", b"2": "a symbolic link", b"3": "a character device", b"4": "a block device",
    b"6": "a FIFO", b"7": "a contiguous file", b"g": "a global pax header", b"L": "a GNU long name",
    b"K": "a GNU long link name", b"S": "a GNU sparse file", b"V": "a volume label", b"M": "a multi-volume part",
}


@dataclass(frozen=True)
class TarMember:
    name: str
    kind: str        # file | dir
    size: int
    mode: int
    mtime: float


def _refuse(where: str, message: str, fix: str = "use an archive made by `ductile system backup`; this one is "
                                                 "damaged or was altered") -> RestoreRefused:
    return RestoreRefused(message, where=where, fix=fix)


def _octal(field: bytes, what: str, where: str) -> int:
    if field and field[0] & 0x80:  # base-256, used for sizes of 8 GiB and more
        value = int.from_bytes(field[1:], "big") | ((field[0] & 0x3F) << (8 * (len(field) - 1)))
        if field[0] & 0x40:
            raise _refuse(where, f"negative {what} in a header")
        return value
    text = field.split(b"\x00", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise _refuse(where, f"malformed {what} in a header") from None


def _text(field: bytes, where: str) -> str:
    try:
        return field.split(b"\x00", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse(where, "a member name is not UTF-8") from None


def _pax(data: bytes, where: str) -> dict[str, str]:
    """Parse pax records ``"<len> <key>=<value>\\n"``."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            if not data[pos:].strip(b"\x00"):
                break
            raise _refuse(where, "malformed pax header")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise _refuse(where, "malformed pax header") from None
        record = data[space + 1:pos + length]
        if length <= 0 or pos + length > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise _refuse(where, "malformed pax header")
        key, _, value = record[:-1].partition(b"=")
        try:
            out[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise _refuse(where, "a pax header is not UTF-8") from None
        pos += length
    return out


class StrictTarReader:
    """Member by member: ``next()`` gives the next header (None at the end), ``chunks()``
    its data. Counts entries and bytes against ``limits`` as it goes."""

    def __init__(self, fileobj: BinaryIO, limits: Limits, where: str) -> None:
        self._gz = gzip.GzipFile(fileobj=fileobj, mode="rb")
        self.limits = limits
        self.where = where
        self.entries = 0
        self.bytes = 0
        self._left = 0      # unread data bytes of the current member
        self._pad = 0

    def _read(self, n: int) -> bytes:
        try:
            data = self._gz.read(n)
        except (OSError, EOFError, zlib.error) as err:
            raise _refuse(self.where, f"the archive is not gzip or is truncated ({type(err).__name__})") from None
        if len(data) != n:
            raise _refuse(self.where, "the archive ends in the middle of a member (truncated)")
        return data

    def _skip_rest(self) -> None:
        for _ in self.chunks():
            pass

    def chunks(self) -> Iterator[bytes]:
        while self._left:
            n = min(self._left, CHUNK)
            data = self._read(n)
            self._left -= n
            yield data
        if self._pad:
            self._read(self._pad)
            self._pad = 0

    def _header(self) -> bytes | None:
        block = self._read(BLOCK)
        if block == b"\x00" * BLOCK:
            return None
        stored = _octal(block[148:156], "checksum", self.where)
        if stored != sum(block[:148]) + 8 * 32 + sum(block[156:]):
            raise _refuse(self.where, "a header's checksum is wrong (damaged or forged)")
        if block[257:263] != b"ustar\x00":
            raise _refuse(self.where, "not a POSIX ustar/pax archive")
        return block

    def next(self) -> TarMember | None:
        self._skip_rest()
        pax: dict[str, str] = {}
        while True:
            block = self._header()
            if block is None:
                return None
            self.entries += 1
            if self.entries > self.limits.max_entries:
                raise _refuse(self.where, f"more than {self.limits.max_entries} entries")
            prefix, name = _text(block[345:500], self.where), _text(block[0:100], self.where)
            name = f"{prefix}/{name}" if prefix else name
            flag = block[156:157]
            size = _octal(block[124:136], "size", name)
            if flag == b"x":
                if size > MAX_PAX:
                    raise _refuse(name, f"a pax header of {size} bytes (at most {MAX_PAX})")
                pax = _pax(self._read(size), name)
                self._read(-size % BLOCK)
                if "linkpath" in pax or any(k.startswith("GNU.sparse") for k in pax):
                    raise _refuse(pax.get("path", name), "a link or sparse file (archives hold regular files only)")
                continue
            name = pax.get("path", name)
            if flag in TYPES:
                raise _refuse(name, f"{TYPES[flag]}: archives made by backup hold regular files and directories only")
            if flag not in (b"0", b"\x00", b"5"):
                raise _refuse(name, f"unknown member type {flag!r}")
            if "size" in pax:
                try:
                    size = int(pax["size"])
                except ValueError:
                    raise _refuse(name, "malformed pax size") from None
            kind = "dir" if flag == b"5" else "file"
            if kind == "dir":
                size = 0
            if size < 0 or size > self.limits.max_bytes - self.bytes:
                raise _refuse(name, f"member of {size} bytes: over the limit of {self.limits.max_bytes} bytes in all",
                              "if you made this archive and expect it to be this large, raise --max-size")
            self.bytes += size
            mode = _octal(block[100:108], "mode", name) & 0o7777
            try:
                mtime = float(pax["mtime"]) if "mtime" in pax else float(_octal(block[136:148], "mtime", name))
            except ValueError:
                raise _refuse(name, "malformed pax mtime") from None
            self._left, self._pad = size, -size % BLOCK
            return TarMember(name.rstrip("/") if kind == "dir" else name, kind, size, mode, mtime)
