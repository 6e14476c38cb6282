"""Show the resolved configuration or its JSON Schema."""

from __future__ import annotations

import click

from ductile.cliopts import config_option, json_option


@click.group()
def config() -> None:
    """Show the resolved configuration or its JSON Schema."""


@config.command("show")
@config_option
@json_option
@click.option("--effective", is_flag=True, help="Include every default and resolved path.")
def show(config_path: str | None, as_json: bool, effective: bool) -> None:
    """Print the configuration (includes merged, ${ENV} expanded, secrets redacted)."""
    from ductile.config import load_config
    from ductile.config.show import effective_view, raw_view
    from ductile.render import emit_json

    loaded = load_config(config_path)
    view = effective_view(loaded.config) if effective else raw_view(loaded.raw)
    if as_json:
        emit_json(view)
    else:
        import yaml

        click.echo(f"# {loaded.path}" + (f" (+{len(loaded.files) - 1} included)" if len(loaded.files) > 1 else ""))
        click.echo(yaml.safe_dump(view, sort_keys=False, default_flow_style=False).rstrip())


@config.command("schema")
def schema() -> None:
    """Print the JSON Schema of the configuration."""
    from ductile.config.schema import config_schema
    from ductile.render import emit_json

    emit_json(config_schema())
