"""Fix texts that name a command: built from the command the operator actually ran.

A hint such as "run it as the key's owner" is only useful if it can be pasted. These
helpers turn the running command line into the exact line to run instead, so the hint
and the command cannot drift apart (tests run the hints they produce).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

AS_UNIT_FLAG = "--as-unit"


def this_command(argv: Sequence[str] | None = None) -> list[str]:
    """``ductile`` followed by the arguments this process was started with."""
    args = list(sys.argv[1:] if argv is None else argv)
    return ["ductile", *args]


def as_user(user: str, argv: Sequence[str]) -> str:
    """The same command run as ``user`` from a root shell (``runuser`` ships with util-linux)."""
    return shlex.join(["runuser", "-u", user, "--", *argv])


def as_unit(argv: Sequence[str]) -> str:
    """The same command re-run with the unit's user and capabilities (needs a root shell)."""
    args = [a for a in argv if a != AS_UNIT_FLAG]
    return shlex.join([*args, AS_UNIT_FLAG])
