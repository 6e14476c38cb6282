"""A fix text that names a ductile command names one that exists.

Collected from the source: every string passed to a call (the fix of a ``Finding``, a
``Refusal``, an error...) and every backticked `ductile …` span in a string. Each names a noun (and a subcommand, for a group) that the CLI really has, and the
options it passes parse. Hints built at run time from the command being run (``--as-unit``,
``runuser -u OWNER --``) are run as printed by tests/test_operator_posture.py.
"""

from __future__ import annotations

import ast
import re
import shlex

import click
import pytest
from conftest import REPO

from ductile.cli import cli

# Specified in SPEC §2 but not built yet: a hint may name them ahead of time.
PENDING_NOUNS = {"system"}
COMMAND = re.compile(r"\bductile ((?:[a-z][a-z-]*)(?: [^`;()]*)?)")


def _strings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):  # keep the literal parts; a {field} becomes a placeholder
        return ["".join(v.value if isinstance(v, ast.Constant) else "X" for v in node.values)]
    if isinstance(node, ast.BinOp):
        return _strings(node.left) + _strings(node.right)
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    return []


def named_commands() -> list[tuple[str, str, bool]]:
    """(where, 'noun sub --opt ...', strict) for every command a fix text or a backticked span
    names. A backticked span is a command for sure (strict); in a fix's prose, "ductile" may
    just be the program's name ("upgrade ductile"), so only a real noun there is checked."""
    out = []
    for f in sorted([*(REPO / "ductile").rglob("*.py"), *(REPO / "commands").rglob("*.py")]):
        for node in ast.walk(ast.parse(f.read_text())):
            texts: list[tuple[str, bool]] = []
            if isinstance(node, ast.Call):  # fix texts: keyword fix=, or any argument of a Finding/Refusal/...
                for arg in [*node.args, *(k.value for k in node.keywords)]:
                    texts += [(s, False) for s in _strings(arg)]
            elif isinstance(node, (ast.Constant, ast.JoinedStr)):
                texts = [(span, True) for s in _strings(node) for span in re.findall(r"`(ductile [^`]+)`", s)]
            for text, strict in texts:
                for m in COMMAND.finditer(text):
                    out.append((f"{f.relative_to(REPO)}:{getattr(node, 'lineno', '?')}", m.group(1).strip(), strict))
    return sorted(set(out))


def test_there_are_hints_to_check() -> None:
    assert len(named_commands()) > 20


@pytest.mark.parametrize(("where", "command", "strict"), named_commands())
def test_a_command_named_in_a_fix_exists_and_parses(where: str, command: str, strict: bool) -> None:
    text = command.replace("…", "").replace("...", "")
    try:
        words = [w.rstrip(",.") for w in shlex.split(text)]
    except ValueError:  # prose with a lone quote
        words = text.split()
    noun = words[0]
    ctx = click.Context(cli)
    group = cli.get_command(ctx, noun)
    if group is None:
        assert noun in PENDING_NOUNS or not strict, f"{where}: `ductile {command}` names no command `{noun}`"
        return
    args = words[1:]
    cmd: click.Command = group
    if isinstance(group, click.Group) and args and re.fullmatch(r"[a-z][a-z-]*", args[0]):
        sub = group.get_command(ctx, args[0])
        assert sub is not None, f"{where}: `ductile {noun}` has no subcommand `{args[0]}`"
        cmd, args = sub, args[1:]
    # options it names must be options of that command (placeholders like X or NAME are fine)
    known = {o for p in cmd.params for o in getattr(p, "opts", [])}
    for a in args:
        if a.startswith("-"):
            assert a.split("=")[0] in known, f"{where}: `ductile {command}`: {a} is not an option of it"
