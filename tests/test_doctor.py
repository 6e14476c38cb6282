"""doctor: findings, exit codes, output forms."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from conftest import EXAMPLES, run_ductile, run_in_pty


def test_example_config_is_clean() -> None:
    proc = run_ductile("doctor", "--config", str(EXAMPLES / "etc" / "config.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "doctor: ok" in proc.stdout


def test_json_report_shape() -> None:
    proc = run_ductile("doctor", "--json", "--config", str(EXAMPLES / "etc" / "config.yaml"))
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["config"] == str(EXAMPLES / "etc" / "config.yaml")
    for f in report["findings"]:
        assert set(f) == {"severity", "category", "field", "message", "fix", "where"}


def test_warnings_exit_2_only_under_fail_on_warnings(tmp_path: Path) -> None:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "etc").mkdir()
    cfg = tmp_path / "etc" / "config.yaml"
    cfg.write_text("plugin_roots: [../plugins]\nstate: {path: ../state/db}\napi: {enabled: false}\n"
                   "accounts:\n  solo: {uid: 61010, gid: 61010, state_dir: /var/lib/x/solo}\n")
    assert run_ductile("doctor", "--config", str(cfg)).returncode == 0
    strict = run_ductile("doctor", "--fail-on-warnings", "--json", "--config", str(cfg))
    assert strict.returncode == 2
    fields = {f["field"] for f in json.loads(strict.stdout)["findings"] if f["severity"] == "warning"}
    assert {"accounts.default", "accounts.untrusted"} <= fields


def test_missing_plugin_root_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("plugin_roots: [nowhere]\nstate: {path: state/db}\n")
    proc = run_ductile("doctor", "--json", "--config", str(cfg))
    assert proc.returncode == 1
    [f] = [f for f in json.loads(proc.stdout)["findings"] if f["severity"] == "error" and f["category"] == "host"]
    assert f["field"] == "plugin_roots[0]" and "does not exist" in f["message"] and f["fix"]


def test_plain_lines_when_not_a_tty_and_a_table_on_a_tty(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("plugin_roots: [nowhere]\n")
    plain = run_ductile("doctor", "--config", str(cfg))
    assert "ERROR" in plain.stdout and "plugin_roots[0]" in plain.stdout and "\x1b[" not in plain.stdout
    # on a terminal: a rich table (box drawing), still no colour with NO_COLOR
    _, out = run_in_pty([sys.executable, "-m", "ductile", "doctor", "--config", str(cfg)],
                        {"NO_COLOR": "1", "COLUMNS": "200"})
    text = out.decode()
    assert "plugin_roots[0]" in text and ("┃" in text or "│" in text)


def test_doctor_says_when_jobs_are_not_dropped_through_setpriv(tmp_path: Path) -> None:
    """An operator who passes LD_PRELOAD to plugins is told that those jobs keep the slower
    in-process drop (a program holding the gateway's capabilities must not see it)."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "etc").mkdir()
    cfg = tmp_path / "etc" / "config.yaml"
    base = ("plugin_roots: [../plugins]\nstate: {path: ../state/db}\napi: {enabled: false}\n"
            "accounts:\n  solo: {uid: 61010, gid: 61010, state_dir: /var/lib/x/solo}\n")
    cfg.write_text(base + "service: {plugin_env_passthrough: [LD_PRELOAD, HTTPS_PROXY]}\n")
    report = json.loads(run_ductile("doctor", "--json", "--config", str(cfg)).stdout)
    [f] = [f for f in report["findings"] if f["field"] == "service.plugin_env_passthrough"]
    assert f["severity"] == "info" and "LD_PRELOAD" in f["message"] and "HTTPS_PROXY" not in f["message"]
    assert "dropped in the forked gateway" in f["message"]
    cfg.write_text(base + "service: {plugin_env_passthrough: [HTTPS_PROXY]}\n")
    report = json.loads(run_ductile("doctor", "--json", "--config", str(cfg)).stdout)
    assert not [f for f in report["findings"] if "forked gateway" in f["message"]]
    [f] = [f for f in report["findings"] if "dropped through" in f["message"]]
    assert f["severity"] == "info" and "/capsh after exec" in f["message"] and "checked from /proc" in f["message"]
