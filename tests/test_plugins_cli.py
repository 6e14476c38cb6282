"""`ductile plugin list` and the doctor's plugin section, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import EXAMPLES, assert_one_line_error, run_ductile

from ductile.config import load_config
from ductile.plugins.inventory import discover_for_config, inventory_findings, plugin_rows


def plugin(root: Path, name: str, *, commands: str = "[{name: poll, type: read}, {name: handle, type: write}]",
           mode: int = 0o755, extra: str = "") -> Path:
    d = root / name
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    (d / "manifest.yaml").write_text(f"name: {name}\nprotocol: 2\nentrypoint: run.sh\ncommands: {commands}\n{extra}")
    (d / "manifest.yaml").chmod(0o644)
    (d / "run.sh").write_text("#!/bin/sh\necho '{\"status\": \"ok\"}'\n")
    (d / "run.sh").chmod(mode)
    return d


def world(tmp_path: Path, plugins_yaml: str) -> Path:
    """A config dir with a plugin root holding: good, loose (group-writable), stray (unconfigured)."""
    root = tmp_path / "plugins"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    plugin(root, "good", extra="config_keys: {required: [token_name], optional: [colour]}\n")
    plugin(root, "loose").chmod(0o775)
    plugin(root, "stray")
    cfg = tmp_path / "config.yaml"
    cfg.write_text("plugin_roots: [plugins]\nstate: {path: state/db}\n"
                   "accounts:\n  default: {uid: 61001, gid: 61001, state_dir: /var/lib/x/default}\n"
                   "  untrusted: {uid: 61002, gid: 61002, state_dir: /var/lib/x/untrusted}\n" + plugins_yaml)
    return cfg


PLUGINS = """plugins:
  good:
    run_as: untrusted
    schedules: [{every: 5m}, {every: 1h, command: sync}]
  loose: {}
  gone:
    enabled: false
"""


def test_list_json_on_the_examples_shows_echo_counter_notify() -> None:
    proc = run_ductile("plugin", "list", "--json", "--config", str(EXAMPLES / "etc" / "config.yaml"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    rows = {row["name"]: row for row in out["plugins"]}
    assert sorted(rows) == ["counter", "echo", "notify"]
    assert all(row["status"] == "ok" and row["configured"] and row["enabled"] for row in rows.values())
    assert (rows["echo"]["grant"], rows["notify"]["grant"], rows["counter"]["grant"]) == ("default", "untrusted", None)
    assert rows["echo"]["commands"] == ["poll", "handle", "health"]
    assert rows["echo"]["directory"] == str(EXAMPLES / "plugins" / "echo")
    assert all(row["lock"] is None for row in rows.values())  # no locks recorded yet
    assert out["findings"] == []


def test_list_table_has_every_column_including_lock() -> None:
    proc = run_ductile("plugin", "list", "--config", str(EXAMPLES / "etc" / "config.yaml"))
    assert proc.returncode == 0, proc.stderr
    header, *lines = proc.stdout.splitlines()
    assert header.split() == ["NAME", "STATUS", "CONFIGURED", "ENABLED", "GRANT", "LOCK", "COMMANDS", "DIRECTORY"]
    echo = next(ln.split() for ln in lines if ln.startswith("echo "))
    assert echo[:7] == ["echo", "ok", "yes", "yes", "default", "-", "poll,handle,health"]


def test_list_shows_skipped_unconfigured_and_missing_plugins(tmp_path: Path) -> None:
    cfg = world(tmp_path, PLUGINS)
    proc = run_ductile("plugin", "list", "--json", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    rows = {row["name"]: row for row in out["plugins"]}
    assert {n: (r["status"], r["configured"], r["enabled"]) for n, r in rows.items()} == {
        "good": ("ok", True, True), "loose": ("skipped", True, True), "stray": ("ok", False, False),
        "gone": ("missing", True, False)}
    assert rows["good"]["grant"] == "untrusted"
    [problem] = rows["loose"]["problems"]
    assert problem["field"] == "trust.not-group-or-world-writable" and "chmod go-w" in problem["fix"]
    assert [f["field"] for f in out["findings"]] == ["trust.not-group-or-world-writable"]
    text = run_ductile("plugin", "list", "--config", str(cfg)).stdout
    assert "error: " in text and "group-writable" in text and "fix: chmod go-w" in text


def test_list_with_a_broken_config_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("plugins:\n  echo: {run_as: nobody}\n")
    assert_one_line_error(run_ductile("plugin", "list", "--config", str(cfg)), "plugins.echo.run_as")


def test_doctor_reports_plugin_mismatches_with_their_lines(tmp_path: Path) -> None:
    cfg = world(tmp_path, PLUGINS)
    proc = run_ductile("doctor", "--json", "--config", str(cfg))
    assert proc.returncode == 1, proc.stdout
    got = {(f["severity"], f["field"]): f for f in json.loads(proc.stdout)["findings"] if f["category"] == "plugin"}
    assert set(got) == {
        ("error", "trust.not-group-or-world-writable"),    # loose: the trust refusal itself
        ("error", "plugins.loose"),                        # ... and that a configured plugin cannot run
        ("warning", "plugins.gone"),                       # configured, not found, but disabled
        ("info", "plugins.stray"),                         # found, never runs
        ("warning", "plugins.good.config"),                # required key not set
        ("error", "plugins.good.schedules[1].command"),    # 'sync' is not a command good declares
    }
    assert got[("error", "plugins.good.schedules[1].command")]["where"] == f"{cfg}:9"
    assert "poll, handle" in got[("error", "plugins.good.schedules[1].command")]["fix"]
    assert got[("error", "plugins.loose")]["where"] == f"{cfg}:10"
    assert "token_name" in got[("warning", "plugins.good.config")]["message"]
    assert "refused by the trust checks" in got[("error", "plugins.loose")]["message"]


def test_doctor_errors_on_an_enabled_plugin_that_is_not_installed(tmp_path: Path) -> None:
    cfg = world(tmp_path, "plugins:\n  good: {config: {token_name: t}}\n  stray: {}\n  ghost: {}\n")
    (tmp_path / "plugins" / "loose").chmod(0o755)
    report = json.loads(run_ductile("doctor", "--json", "--config", str(cfg)).stdout)
    [f] = [f for f in report["findings"] if f["severity"] != "info" and f["category"] == "plugin"]
    assert (f["severity"], f["field"]) == ("error", "plugins.ghost") and "no manifest.yaml names it" in f["message"]
    assert f["where"] == f"{cfg}:9"


def test_pipeline_and_webhook_commands_must_be_declared(tmp_path: Path) -> None:
    cfg = world(tmp_path, "plugins:\n  good: {config: {token_name: t}}\n  stray: {}\n"
                "pipelines:\n  - {name: p, on: good.done, steps: [{uses: stray, command: notify}]}\n"
                "webhooks:\n  - {path: /h, plugin: good, secret_ref: h, command: receive}\n")
    loaded = load_config(str(cfg))
    findings = inventory_findings(loaded.config, discover_for_config(loaded.config))
    assert sorted(f.field for f in findings if f.severity == "error") == [
        "pipelines[0].steps[0].command", "webhooks[0].command"]


def test_rows_are_pure_data_sorted_by_name(tmp_path: Path) -> None:
    loaded = load_config(str(world(tmp_path, PLUGINS)))
    rows = plugin_rows(loaded.config, discover_for_config(loaded.config))
    assert [r.name for r in rows] == ["gone", "good", "loose", "stray"]
    assert all(r.lock == "-" for r in rows)


def test_doctor_warns_when_any_plugin_can_start_a_pipeline_that_writes(tmp_path: Path) -> None:
    cfg = world(tmp_path, "plugins:\n  good: {config: {token_name: t}}\n  stray: {}\n"
                "pipelines:\n"
                "  - {name: open-write, on: good.done, steps: [{uses: stray, command: handle}]}\n"
                "  - {name: bound-write, on: {event: good.done, from: good}, steps: [{uses: stray}]}\n"
                "  - {name: open-read, on: good.*, steps: [{uses: stray, command: poll}]}\n")
    proc = run_ductile("doctor", "--json", "--config", str(cfg))
    found = [f for f in json.loads(proc.stdout)["findings"] if f["category"] == "pipelines"]
    assert [(f["severity"], f["field"]) for f in found] == [("warning", "pipelines[0].on")], found
    assert "stray handle" in found[0]["message"] and "from: <plugin>" in found[0]["fix"]
    assert found[0]["where"] == f"{cfg}:10"


def test_on_from_must_name_configured_plugins(tmp_path: Path) -> None:
    cfg = world(tmp_path, "plugins:\n  good: {config: {token_name: t}}\n"
                "pipelines:\n  - {name: p, on: {event: good.done, from: [good, nobody]}, steps: [{uses: good}]}\n")
    proc = run_ductile("doctor", "--json", "--config", str(cfg))
    errors = [f for f in json.loads(proc.stdout)["findings"] if f["severity"] == "error"]
    assert [f["field"] for f in errors] == ["pipelines[0].on.from[1]"] and "nobody" in errors[0]["message"]
