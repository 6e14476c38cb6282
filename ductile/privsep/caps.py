"""Parse capability facts out of ``/proc/<pid>/status`` text (pure).

The boot gate asks one question — can this process drop to another uid? — and the wall
tests ask the same questions of a dropped child. Any read or parse failure means "no
capability": a gateway that cannot prove it holds the capability must not claim it.
"""

from __future__ import annotations

from dataclasses import dataclass

CAP_SETGID = 6
CAP_SETUID = 7
CAP_KILL = 5
DROP_MASK = (1 << CAP_SETUID) | (1 << CAP_SETGID)
CAP_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


@dataclass(frozen=True)
class ProcStatus:
    """The privilege-relevant lines of one /proc/<pid>/status."""

    caps: dict[str, int]               # CapInh/CapPrm/CapEff/CapBnd/CapAmb -> bitmask
    no_new_privs: int | None
    uids: tuple[int, ...]              # real, effective, saved, fs
    gids: tuple[int, ...]
    groups: tuple[int, ...]

    def cap(self, name: str) -> int:
        return self.caps.get(name, 0)

    def unprivileged(self) -> bool:
        """True when the inheritable, permitted, effective and ambient sets are all empty."""
        return all(self.caps.get(n, -1) == 0 for n in ("CapInh", "CapPrm", "CapEff", "CapAmb"))


def parse_status(text: str) -> ProcStatus:
    """Parse status text; raises ValueError if a capability line is malformed or missing."""
    caps: dict[str, int] = {}
    nnp: int | None = None
    uids: tuple[int, ...] = ()
    gids: tuple[int, ...] = ()
    groups: tuple[int, ...] = ()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        value = value.strip()
        if key in CAP_FIELDS:
            if not value or len(value) > 16:
                raise ValueError(f"malformed {key} line: {line!r}")
            caps[key] = int(value, 16)
        elif key == "NoNewPrivs":
            nnp = int(value)
        elif key == "Uid":
            uids = tuple(int(v) for v in value.split())
        elif key == "Gid":
            gids = tuple(int(v) for v in value.split())
        elif key == "Groups":
            groups = tuple(int(v) for v in value.split())
    missing = [n for n in ("CapInh", "CapPrm", "CapEff", "CapBnd") if n not in caps]
    if missing:
        raise ValueError(f"status text lacks {', '.join(missing)}")
    return ProcStatus(caps, nnp, uids, gids, groups)


def has_drop_capability(euid: int, status_text: str | None) -> bool:
    """SPEC §5.1: euid 0, or CapEff holds both CAP_SETUID (bit 7) and CAP_SETGID (bit 6)."""
    if euid == 0:
        return True
    if status_text is None:
        return False
    try:
        eff = parse_status(status_text).cap("CapEff")
    except ValueError:
        return False
    return eff & DROP_MASK == DROP_MASK


def describe_mask(mask: int) -> str:
    """``0xc0`` -> ``cap_setgid,cap_setuid`` (for messages; unknown bits as cap_<n>)."""
    names = {5: "cap_kill", 6: "cap_setgid", 7: "cap_setuid", 21: "cap_sys_admin", 0: "cap_chown",
             1: "cap_dac_override", 2: "cap_dac_read_search", 3: "cap_fowner", 12: "cap_net_admin"}
    bits = [names.get(b, f"cap_{b}") for b in range(64) if mask >> b & 1]
    return ",".join(bits) or "none"
