"""Every message, page and guide that tells the operator to run a ductile command names one
that exists: a hint pointing at a missing command (``restore from `ductile system backup```
before there was one) is a fix that cannot be followed.

The checks walk the click tree as it is: for a noun that is a group, the next word must be
one of its subcommands (and the next after that, for a nested group); inside backticks the
word after ``ductile`` must be a noun or an option."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import click
from conftest import REPO

from ductile.cli import cli

WORDS = re.compile(r"\bductile ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?(?: ([a-z][a-z-]*))?")
BACKTICKED = re.compile(r"`+ductile ([^`\n]*)`")


@cache
def tree() -> dict[str, click.Command]:
    ctx = click.Context(cli)
    out = {}
    for name in cli.list_commands(ctx):
        cmd = cli.get_command(ctx, name)
        assert cmd is not None
        out[name] = cmd
    return out


def sources() -> list[Path]:
    files = [*(REPO / "ductile").rglob("*.py"), *(REPO / "commands").rglob("*.py"), REPO / "README.md",
             *(REPO / "docs").glob("*.md"), *(REPO / "man").iterdir(), REPO / "deploy" / "install.sh",
             *(REPO / "deploy" / "systemd").glob("*.service"), *(REPO / "deploy" / "systemd").glob("*.timer")]
    return [f for f in files if f.is_file()]


def dangling(text: str) -> list[str]:
    """Command references in ``text`` that the CLI does not have."""
    ctx = click.Context(cli)
    text = text.replace("\\-", "-")  # roff
    out = []
    for m in WORDS.finditer(text):
        noun, sub, sub2 = m.groups()
        cmd = tree().get(noun)
        if not isinstance(cmd, click.Group) or sub is None:
            continue  # prose ("ductile reads ...") or a plain command
        found = cmd.get_command(ctx, sub)
        if found is None or (isinstance(found, click.Group) and sub2 and found.get_command(ctx, sub2) is None):
            out.append(m.group(0))
    for m in BACKTICKED.finditer(text):
        first = (m.group(1).split() or [""])[0]
        if first not in tree() and not first.startswith("-"):
            out.append(m.group(0))
    return out


def test_every_command_a_message_page_or_guide_names_exists() -> None:
    found = {str(f.relative_to(REPO)): dangling(f.read_text(encoding="utf-8", errors="replace")) for f in sources()}
    assert not {f: refs for f, refs in found.items() if refs}


def test_the_check_finds_a_missing_command() -> None:
    assert dangling("fix: restore from `ductile system rewind`") == ["ductile system rewind"]
    assert dangling("run `ductile reload` first") == ["`ductile reload`"]
    assert dangling("ductile vault principal remove x") == ["ductile vault principal remove"]
    assert dangling("ductile reads its config; ductile system backup --scope all; `ductile --help`") == []
