"""The lazy click host.

Built-in nouns are a table here (module, attribute, one-line summary), so ``ductile --help``
and invoking one noun cost neither an import of a command module (or of
rich/yaml/pyrage/psutil) nor ``importlib.metadata``'s scan of every installed distribution
(about 20 ms, more than click itself). A test keeps the table equal to the entry points in
setup.cfg and each summary equal to its module's docstring.

Third-party distributions still add nouns by declaring a ``ductile.commands`` entry point.
They are found by a light scan of the ``entry_points.txt`` files on ``sys.path`` — only
when help lists nouns or an unknown noun is invoked — and their summaries are read from
source with ``ast`` (the module is never executed). A built-in name always wins.
"""

from __future__ import annotations

import importlib
import os
import sys
from functools import cached_property
from typing import Any

import click

from ductile import __version__
from ductile.errors import DuctileError
from ductile.interpreter import refuse_unsafe_python

ENTRY_POINT_GROUP = "ductile.commands"

BUILTIN: dict[str, tuple[str, str, str]] = {
    "account": ("ductile_commands.account", "account",
                "List accounts, prove the wall holds for each, explain why a plugin runs as whom"),
    "config": ("ductile_commands.config", "config", "Show the resolved configuration or its JSON Schema"),
    "deploy": ("ductile_commands.deploy", "deploy",
               "Render the systemd files (sysusers, tmpfiles, unit, backup service and timer) from the config"),
    "doctor": ("ductile_commands.doctor", "doctor",
               "Check the config, the host and the privilege posture; explain every problem"),
    "job": ("ductile_commands.job", "job", "The job ledger: list jobs, show one job's attempts, transitions and result"),
    "plugin": ("ductile_commands.plugin", "plugin", "Discover, create, test and run plugins; record their locks"),
    "serve": ("ductile_commands.serve", "serve",
              "Run the gateway: scheduler, workers and the HTTP API, in the foreground until SIGTERM"),
    "system": ("ductile_commands.system", "system",
               "Back up and restore the gateway, ask the running gateway how it is, reload it, check the state"),
    "vault": ("ductile_commands.vault", "vault",
              "Manage the age vault: secrets, grants, principals and key rotation; values only via stdin"),
}


def _module_summary(module: str) -> str:
    """First docstring line of ``module`` without executing it ('' if unavailable)."""
    import ast
    import importlib.util

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


def entry_point_nouns(group: str = ENTRY_POINT_GROUP, path: list[str] | None = None) -> dict[str, str]:
    """noun -> ``module:attribute`` from the ``entry_points.txt`` of every distribution on
    ``path`` (``sys.path``): the first distribution on the path wins, as Python's import does."""
    found: dict[str, str] = {}
    for entry in sys.path if path is None else path:
        try:
            names = sorted(n for n in os.listdir(entry or ".") if n.endswith((".dist-info", ".egg-info")))
        except OSError:
            continue
        for name in names:
            try:
                with open(os.path.join(entry or ".", name, "entry_points.txt"), encoding="utf-8") as fh:
                    text = fh.read()
            except OSError:
                continue
            section = None
            for raw in text.splitlines():
                line = raw.strip()
                if line.startswith("[") and line.endswith("]"):
                    section = line[1:-1].strip()
                elif section == group and "=" in line and not line.startswith(("#", ";")):
                    noun, _, value = line.partition("=")
                    found.setdefault(noun.strip(), value.split("[", 1)[0].strip())
    return found


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on demand: built-ins from ``BUILTIN``,
    others from entry points."""

    @cached_property
    def _third_party(self) -> dict[str, str]:
        return {n: v for n, v in entry_point_nouns().items() if n not in BUILTIN}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(BUILTIN) | set(self._third_party) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name in BUILTIN:
            module, attr, _ = BUILTIN[cmd_name]
            target = f"{module}:{attr}"
        elif cmd_name in self._third_party:
            target = self._third_party[cmd_name]
        else:
            return None
        module, _, attr = target.partition(":")
        command: Any = importlib.import_module(module)
        for part in attr.split(".") if attr else ():
            command = getattr(command, part)
        if not isinstance(command, click.Command):
            raise click.ClickException(f"entry point {cmd_name} = {target} is not a click command")
        self.commands[cmd_name] = command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                summary = self.commands[name].get_short_help_str(limit=70)
            elif name in BUILTIN:
                summary = BUILTIN[name][2]
            else:
                summary = _module_summary(self._third_party[name].partition(":")[0])
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
    except OSError as err:  # a full disk or a read-only mount is the operator's to fix, not a crash
        if _debug_requested(args):
            raise
        from ductile.state.faults import os_fault

        fault = os_fault(err)
        click.echo(f"ductile: error: {fault.message} (fix: {fault.fix})", err=True)
        sys.exit(1)
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
