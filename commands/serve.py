"""Run the gateway: scheduler, workers and the HTTP API, in the foreground until SIGTERM."""

from __future__ import annotations

import click

from ductile.cliopts import config_option


@click.command()
@config_option
@click.option("--demo", is_flag=True,
              help="Generate (or reuse) a self-contained demo under --demo-dir and serve it.")
@click.option("--demo-dir", metavar="DIR", default=".demo", show_default=True, envvar="DUCTILE_DEMO_DIR",
              help="Where --demo keeps its config, state, vault and plugins.")
@click.option("--show-token", is_flag=True, help="With --demo: print the demo API token again.")
@click.pass_context
def serve(ctx: click.Context, config_path: str | None, demo: bool, demo_dir: str, show_token: bool) -> None:
    """Run the gateway: scheduler, workers and the HTTP API, in the foreground.

    Boot order: config, plugins, state database (jobs a crash left running are recovered),
    boot gate, filesystem reconcile, posture line, then work. Any refusal exits 1 with one
    line before a plugin runs. SIGTERM drains: no new jobs, running jobs finish within
    service.shutdown_timeout or are killed and re-queued; exit 0.
    """
    from ductile.serve.main import run_serve

    if config_path and demo:
        raise click.UsageError("--demo makes its own config; drop --config")
    ctx.exit(run_serve(config_path, demo_dir=demo_dir if demo else None, show_token=show_token))
