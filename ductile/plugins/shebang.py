"""What a ``#!`` line makes the kernel execute, as pure functions (SPEC §4 trust, §6 lock).

The kernel (binfmt_script) reads ``#!``, skips blanks, takes the interpreter path up to the
next blank and the rest of the line, trimmed, as at most one argument. ``/usr/bin/env``
is followed: its options are skipped (``-S`` splits its string into more arguments,
``-i`` empties the environment, ``NAME=VALUE`` sets a variable — ``PATH=`` included) and
the first remaining word is the command it looks up on ``PATH``. What is looked up where
is decided here; the lookup itself is the caller's (it touches the disk).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

LINE_MAX = 256            # BINPRM_BUF_SIZE: the kernel reads no more of the #! line
EXECVP_DEFAULT_PATH = "/bin:/usr/bin"   # glibc's search path when PATH is unset
ENV_FLAGS = frozenset({"-i", "-0", "-v", "--ignore-environment", "--null", "--debug", "--list-signal-handling"})
ENV_WITH_VALUE = {"-u": "unset", "--unset": "unset", "-C": "chdir", "--chdir": "chdir", "-S": "split",
                  "--split-string": "split", "--default-signal": "signal", "--ignore-signal": "signal",
                  "--block-signal": "signal"}
OPTIONAL_VALUE = frozenset({"--default-signal", "--ignore-signal", "--block-signal"})


@dataclass(frozen=True)
class Shebang:
    interpreter: str
    argument: str | None


@dataclass(frozen=True)
class EnvCall:
    """What ``env`` will run: ``command`` (a name to look up, or a path) on ``path``."""

    command: str | None
    path: str | None          # the PATH it searches (None: the plugin's own PATH)
    error: str = ""


def parse_shebang(head: bytes) -> Shebang | None:
    """The ``#!`` line of a file's first bytes, or None when it has none (ELF and others)."""
    if not head.startswith(b"#!"):
        return None
    line = head[2:LINE_MAX].split(b"\n", 1)[0].decode("utf-8", "surrogateescape")
    line = line.strip(" \t\r")
    if not line:
        return Shebang("", None)
    for i, ch in enumerate(line):
        if ch in " \t":
            rest = line[i:].strip(" \t")
            return Shebang(line[:i], rest or None)
    return Shebang(line, None)


def is_env(interpreter: str) -> bool:
    return posixpath.basename(interpreter) == "env"


def env_call(argument: str | None, plugin_path: str) -> EnvCall:
    """Follow ``env``'s argument parsing to the command it executes."""
    if argument is None:
        return EnvCall(None, None, "`#!/usr/bin/env` names no command")
    tokens = [argument]
    path: str | None = None
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if tok == "--":
            break
        if tok in ENV_FLAGS:
            if tok in ("-i", "--ignore-environment"):
                path = EXECVP_DEFAULT_PATH
            continue
        name, _, attached = tok.partition("=") if tok.startswith("--") else (tok[:2], "", tok[2:])
        if name in ENV_WITH_VALUE and tok.startswith("-"):
            kind = ENV_WITH_VALUE[name]
            value = attached
            if not value and name not in OPTIONAL_VALUE:
                if i >= len(tokens):
                    return EnvCall(None, path, f"env option {name} needs a value")
                value = tokens[i]
                i += 1
            if kind == "split":
                tokens[i:i] = value.split()
            continue
        if tok.startswith("-") and len(tok) > 1:
            return EnvCall(None, path, f"env option {tok} is not understood, so what it runs cannot be checked")
        if "=" in tok:
            key, _, value = tok.partition("=")
            if key == "PATH":
                path = value
            continue
        i -= 1
        break
    if i >= len(tokens):
        return EnvCall(None, path, "`#!/usr/bin/env` names no command")
    return EnvCall(tokens[i], path if path is not None else plugin_path)


def search_dirs(path: str) -> list[str]:
    """PATH's entries in order; an empty or relative entry means the working directory
    (the account's own state_dir) and is returned as it is, for the caller to refuse."""
    return path.split(":")
