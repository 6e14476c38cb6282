"""The lazy click host.

Nouns are entry points in the ``ductile.commands`` group. ``ductile --help`` lists
them with the first line of each module's docstring, read from source with ``ast``
(the module is never executed), so help costs no import of a command module or of
rich/yaml/pyrage/psutil. A noun is imported only when it is invoked. Third-party
distributions add nouns by declaring the same entry point.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
from functools import cached_property
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import click

from ductile import __version__
from ductile.errors import DuctileError
from ductile.interpreter import refuse_unsafe_python

ENTRY_POINT_GROUP = "ductile.commands"


def _module_summary(module: str) -> str:
    """First docstring line of ``module`` without executing it ('' if unavailable)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return ""
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return ""
    try:
        with open(spec.origin, encoding="utf-8") as fh:
            doc = ast.get_docstring(ast.parse(fh.read(), filename=spec.origin))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return ""
    return doc.strip().splitlines()[0].rstrip(".") if doc else ""


class LazyGroup(click.Group):
    """A click group whose subcommands come from entry points, imported on demand."""

    @cached_property
    def _entry_points(self) -> dict[str, EntryPoint]:
        found: dict[str, EntryPoint] = {}
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            found.setdefault(ep.name, ep)  # first distribution wins on a name clash
        return found

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self._entry_points) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        ep = self._entry_points.get(cmd_name)
        if ep is None:
            return None
        command = ep.load()
        if not isinstance(command, click.Command):
            raise click.ClickException(f"entry point {ep.name} = {ep.value} is not a click command")
        self.commands[cmd_name] = command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                summary = self.commands[name].get_short_help_str(limit=70)
            else:
                summary = _module_summary(self._entry_points[name].module)
            rows.append((name, summary))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="ductile", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, envvar="DUCTILE_DEBUG", help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """ductile: run plugins on schedules, triggers, webhooks and events, each dropped
    to its own unprivileged OS account.

    Every command takes --help. Read commands take --json.
    """
    ctx.obj = {"debug": debug}


def _debug_requested(argv: list[str]) -> bool:
    """Same truth values click uses for the --debug envvar, so the two never disagree."""
    return "--debug" in argv or os.environ.get("DUCTILE_DEBUG", "").strip().lower() in ("1", "true", "t", "yes", "y", "on")


def main(argv: list[str] | None = None, prog_name: str = "ductile") -> Any:
    """Console-script entry: one clean stderr line per expected error, exit code from the error."""
    args = list(sys.argv[1:] if argv is None else argv)
    refusal = refuse_unsafe_python(tuple(sys.version_info[:3]), sys.implementation.name)
    if refusal is not None:
        click.echo(f"ductile: error: {refusal.one_line()}", err=True)
        sys.exit(refusal.exit_code)
    try:
        rv = cli.main(args=args, prog_name=prog_name, standalone_mode=False)
    except DuctileError as err:
        if _debug_requested(args):
            raise
        from ductile.render import safe  # plugin text can reach an error line: no escapes to the tty

        click.echo(f"ductile: error: {safe(err.one_line())}", err=True)
        sys.exit(err.exit_code)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except click.Abort:
        click.echo("ductile: aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("ductile: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as err:  # noqa: BLE001 - the last line of defence: no traceback without --debug
        if _debug_requested(args):
            raise
        from ductile.render import safe

        click.echo(
            f"ductile: internal error: {type(err).__name__}: {safe(str(err))} (rerun with --debug for a traceback)",
            err=True,
        )
        sys.exit(70)
    # standalone_mode=False turns ctx.exit(n) and --help into a returned exit code
    sys.exit(rv if isinstance(rv, int) else 0)
