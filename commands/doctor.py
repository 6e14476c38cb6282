"""Check the config, the host and the privilege posture; explain every problem."""

from __future__ import annotations

import click

from ductile.cliopts import as_unit_option, config_option, json_option, run_as_unit_if_asked


@click.command()
@config_option
@json_option
@click.option("--fail-on-warnings", is_flag=True, help="Exit 2 when there are warnings but no errors.")
@click.option("--strict", is_flag=True, help="Side-door warnings are errors (a login uid, a sudo rule, ...).")
@as_unit_option
@click.pass_context
def doctor(ctx: click.Context, config_path: str | None, as_json: bool, fail_on_warnings: bool, strict: bool,
           as_unit: bool) -> None:
    """Check the config, the host and the privilege posture; explain every problem.

    The posture is judged for the gateway under its systemd unit when one starts this
    config (its User= and capabilities), not for this shell.
    Exit 0 when clean, 1 on errors, 2 on warnings with --fail-on-warnings.
    """
    run_as_unit_if_asked(as_unit, config_path)
    from ductile.doctor import run_doctor
    from ductile.render import emit_json, say, table

    report = run_doctor(config_path, strict=strict)
    if as_json:
        emit_json(report.as_dict())
    else:
        if report.config_path:
            say(f"config: {report.config_path}", err=False)
        if report.findings:
            table(["severity", "category", "where", "message", "fix"],
                  [(f.severity.upper(), f.category, f.location(), f.message, f.fix) for f in report.findings],
                  styles={"severity": "bold"})
        counts = report.as_dict()["counts"]
        verdict = "problems found" if counts["error"] else "ok"  # type: ignore[index]
        say(f"doctor: {verdict}: {counts['error']} error(s), {counts['warning']} warning(s)", err=False)  # type: ignore[index]
    ctx.exit(report.exit_code(fail_on_warnings))
