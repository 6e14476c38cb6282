"""The shipped deploy/systemd/ files are exactly what `ductile deploy render` makes from the
shipped deploy/config/ configs, so the three copies of each account triple cannot drift;
and the `deploy render` command behaves like every other noun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, assert_one_line_error, run_ductile

from ductile.config.load import load_config
from ductile.deploy import ARTEFACTS, layout_for, render

SYSTEMD = REPO / "deploy" / "systemd"
INSTANCES = {
    # static file prefix: (mirror config, config dir on the host, gateway user)
    "ductile": (REPO / "deploy" / "config" / "ductile.yaml", "/etc/ductile", "ductile"),
    "ductile-admin": (REPO / "deploy" / "config" / "ductile-admin.yaml", "/etc/ductile-admin", "ductile-admin"),
}
STATIC_NAME = {"sysusers": "{}.sysusers.conf", "tmpfiles": "{}.tmpfiles.conf", "unit": "{}.service",
               "backup-service": "{}-backup.service", "backup-timer": "{}-backup.timer"}
REGENERATE = "regenerate with `make deploy-files` after changing deploy/config/ or ductile/deploy/"


def static(instance: str, artefact: str) -> Path:
    return SYSTEMD / STATIC_NAME[artefact].format(instance)


@pytest.mark.parametrize("artefact", ARTEFACTS)
@pytest.mark.parametrize("instance", INSTANCES)
def test_static_file_equals_render_of_its_mirror_config(instance: str, artefact: str) -> None:
    config, config_dir, user = INSTANCES[instance]
    layout = layout_for(load_config(str(config), gateway_uid=0), config_dir=config_dir, gateway_user=user)
    assert static(instance, artefact).read_text() == render(artefact, layout), REGENERATE


def test_static_files_have_no_strays() -> None:
    expected = {static(i, a).name for i in INSTANCES for a in ARTEFACTS}
    assert {p.name for p in SYSTEMD.iterdir()} == expected


def test_mirror_configs_hold_the_spec_layout() -> None:
    loaded = load_config(str(INSTANCES["ductile"][0]), gateway_uid=0)
    accts = {n: (a.uid, a.gid, a.state_dir) for n, a in loaded.config.accounts.items()}
    assert accts == {"default": (1001, 1001, "/var/lib/ductile/accounts/default"),
                     "untrusted": (1002, 1002, "/var/lib/ductile/accounts/untrusted")}
    admin = load_config(str(INSTANCES["ductile-admin"][0]), gateway_uid=0).config
    assert admin.accounts == {} and admin.api.listen != loaded.config.api.listen


@pytest.mark.parametrize("artefact", ARTEFACTS)
def test_cli_prints_the_same_text(artefact: str) -> None:
    config, config_dir, _ = INSTANCES["ductile"]
    proc = run_ductile("deploy", "render", artefact, "--config", str(config), "--config-dir", config_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout == static("ductile", artefact).read_text()


def test_cli_json_names_where_the_file_goes() -> None:
    config, config_dir, user = INSTANCES["ductile-admin"]
    proc = run_ductile("deploy", "render", "unit", "--config", str(config), "--config-dir", config_dir,
                       "--gateway-user", user, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["install_path"] == "/etc/systemd/system/ductile-admin.service"
    assert doc["config"] == str(config)
    assert doc["text"] == static("ductile-admin", "unit").read_text()


def test_config_dir_defaults_to_where_the_config_was_loaded_from(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("state: {path: /var/lib/dg/ductile.db}\n")
    proc = run_ductile("deploy", "render", "tmpfiles", "--config", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    assert f"d {tmp_path} " in json.loads(proc.stdout)["text"]


def test_cli_refusal_is_one_line_with_file_line_field_and_fix(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        "accounts:\n"
        "  default: {uid: 1001, gid: 1001, state_dir: /srv/accounts/default}\n")
    proc = run_ductile("deploy", "render", "sysusers", "--config", str(tmp_path), "--config-dir", "/etc/ductile")
    line = assert_one_line_error(proc, "config.yaml:2", "accounts.default.state_dir", "/var/lib/ductile", "fix:")
    assert proc.stdout == ""
    assert "0711" in line


def test_cli_refuses_a_bad_gateway_user_as_usage() -> None:
    config, config_dir, _ = INSTANCES["ductile"]
    proc = run_ductile("deploy", "render", "unit", "--config", str(config), "--config-dir", config_dir,
                       "--gateway-user", "Not Valid")
    assert_one_line_error(proc, "--gateway-user", code=2)


def test_account_uid_is_checked_against_the_gateway_users_uid(tmp_path: Path) -> None:
    # the config rule "no account has the gateway's uid" is judged against the uid of
    # --gateway-user when it exists on this host, not the uid of whoever renders
    import pwd

    nobody = pwd.getpwnam("nobody")
    (tmp_path / "config.yaml").write_text(
        f"accounts:\n  default: {{uid: {nobody.pw_uid}, gid: 1001, state_dir: /var/lib/dg/accounts/default}}\n"
        "state: {path: /var/lib/dg/ductile.db}\n")
    args = ("deploy", "render", "unit", "--config", str(tmp_path), "--config-dir", "/etc/dg")
    assert_one_line_error(run_ductile(*args, "--gateway-user", "nobody"), "accounts.default.uid", "gateway's own uid")
    assert run_ductile(*args, "--gateway-user", "dg").returncode == 0


def test_render_help_names_every_artefact() -> None:
    proc = run_ductile("deploy", "render", "--help")
    assert proc.returncode == 0
    for artefact in ARTEFACTS:
        assert artefact in proc.stdout
