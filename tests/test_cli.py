"""The CLI host: lazy nouns, version, refusal formatting, third-party nouns."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import REPO, assert_one_line_error, run_ductile

from ductile.interpreter import refuse_unsafe_python

HEAVY = ["rich", "yaml", "pyrage", "psutil", "ductile.config", "ductile_commands.doctor", "ductile_commands.config"]


def _entry_point_nouns() -> list[str]:
    from importlib.metadata import entry_points

    return sorted(ep.name for ep in entry_points(group="ductile.commands"))


def test_help_lists_every_noun_with_its_summary() -> None:
    proc = run_ductile("--help")
    assert proc.returncode == 0, proc.stderr
    commands = proc.stdout.split("Commands:", 1)[1]
    for noun in _entry_point_nouns():
        line = next((ln for ln in commands.splitlines() if ln.strip().startswith(noun + " ")), None)
        assert line is not None, f"{noun} missing from --help"
        assert len(line.split()) > 1, f"{noun} has no one-line help"


def test_help_imports_no_command_module_and_no_heavy_library() -> None:
    code = textwrap.dedent("""
        import sys, json
        from ductile.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        print(json.dumps(sorted(sys.modules)))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(proc.stdout.splitlines()[-1]))
    assert "Commands:" in proc.stdout
    for mod in HEAVY:
        assert mod not in loaded, f"--help imported {mod}"
    assert not any(m.startswith("ductile_commands.") for m in loaded)


def test_invoking_a_noun_imports_only_that_noun() -> None:
    code = textwrap.dedent("""
        import sys, json
        from ductile.cli import main
        try:
            main(["config", "schema"])
        except SystemExit:
            pass
        print(json.dumps(sorted(m for m in sys.modules if m.startswith("ductile_commands."))))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout.splitlines()[-1]) == ["ductile_commands.config"]


def test_version_matches_package_metadata() -> None:
    from importlib.metadata import version

    proc = run_ductile("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"ductile {version('ductile')}"


def test_console_script_and_module_are_the_same_program() -> None:
    script = Path(sys.executable).parent / "ductile"
    a = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    b = run_ductile("--version")
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout


def test_unknown_noun_is_a_usage_error() -> None:
    proc = run_ductile("frobnicate")
    assert proc.returncode == 2
    assert "No such command" in proc.stderr and "Traceback" not in proc.stderr


def test_python_3_12_0_is_refused_and_others_pass() -> None:
    refusal = refuse_unsafe_python((3, 12, 0), "cpython")
    assert refusal is not None and "CVE-2023-6507" in refusal.one_line() and "3.12.1" in refusal.fix
    assert refuse_unsafe_python((3, 10, 9), "cpython") is not None
    for ok in [(3, 11, 2), (3, 11, 7), (3, 12, 1), (3, 13, 0)]:
        assert refuse_unsafe_python(ok, "cpython") is None
    assert refuse_unsafe_python((3, 12, 0), "pypy") is None


def test_main_refuses_3_12_0_with_one_line(monkeypatch, capsys) -> None:
    import ductile.cli as cli

    monkeypatch.setattr(cli, "refuse_unsafe_python", lambda v, i: refuse_unsafe_python((3, 12, 0), "cpython"))
    try:
        cli.main(["--help"])
    except SystemExit as exc:
        assert exc.code == 1
    else:
        raise AssertionError("main did not exit")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CVE-2023-6507" in err[0]


def test_internal_errors_have_no_traceback_unless_debug(tmp_path: Path) -> None:
    # a directory where a file is expected makes the YAML reader fail in an unplanned way
    # only if unhandled; use a noun that raises a plain exception through a fixture noun instead
    dist = _fixture_distribution(tmp_path, body="raise RuntimeError('boom')")
    env = {"PYTHONPATH": str(dist)}
    proc = run_ductile("hello", env=env)
    assert proc.returncode == 70
    assert "internal error: RuntimeError: boom" in proc.stderr and "Traceback" not in proc.stderr
    debug = run_ductile("--debug", "hello", env=env)
    assert "Traceback" in debug.stderr


def _fixture_distribution(root: Path, body: str = "click.echo('hello from a third-party noun')") -> Path:
    """A real (if tiny) installed distribution: a module plus its .dist-info with an entry point."""
    site = root / "site"
    (site / "hello_noun-1.0.dist-info").mkdir(parents=True)
    (site / "hello_noun.py").write_text(textwrap.dedent(f'''
        """Say hello from a third-party distribution."""
        import click

        @click.command()
        def hello():
            """Say hello from a third-party distribution."""
            {body}
    '''))
    (site / "hello_noun-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: hello-noun\nVersion: 1.0\n")
    (site / "hello_noun-1.0.dist-info" / "entry_points.txt").write_text("[ductile.commands]\nhello = hello_noun:hello\n")
    return site


def test_third_party_distribution_adds_a_noun(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(_fixture_distribution(tmp_path))}
    helped = run_ductile("--help", env=env)
    assert "hello" in helped.stdout and "Say hello from a third-party distribution" in helped.stdout
    ran = run_ductile("hello", env=env)
    assert ran.returncode == 0 and ran.stdout.strip() == "hello from a third-party noun"


def test_every_package_directory_is_listed_in_setup_cfg() -> None:
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    found = {".".join(p.relative_to(REPO).parts[:-1]) for p in (REPO / "ductile").rglob("__init__.py")}
    found.add("ductile_commands")
    assert found == listed


def test_config_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text("service:\n  max_workers: many\n")
    assert_one_line_error(run_ductile("config", "show", "--config", str(bad)), "service.max_workers", "config.yaml:2")


def test_the_builtin_table_is_setup_cfg_and_each_summary_is_its_docstring() -> None:
    import configparser

    from ductile.cli import BUILTIN, _module_summary

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    declared = {}
    for line in cfg["options.entry_points"]["ductile.commands"].strip().splitlines():
        noun, _, target = line.partition("=")
        declared[noun.strip()] = target.strip()
    assert {n: f"{m}:{a}" for n, (m, a, _) in BUILTIN.items()} == declared
    for noun, (module, _, summary) in BUILTIN.items():
        assert summary == _module_summary(module), noun


def test_help_does_not_scan_distributions_with_importlib_metadata() -> None:
    code = textwrap.dedent("""
        import sys, json
        from ductile.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        print(json.dumps("importlib.metadata" in sys.modules))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout.splitlines()[-1]) is False
