"""This shell vs the gateway under its unit: doctor, account explain and account verify judge
the gateway the installed unit will start, say so when the shell differs, never tell an
unconfined story after a refusal, and --as-unit re-runs a command with the unit's user and
capabilities for real. The fix texts they print are run as printed."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import assert_one_line_error
from wallworld import PROBE_PLUGIN, PYTHON, NamedUser, World, destroy, make_world, require_root

pytestmark = pytest.mark.privileged

UNIT = """\
[Service]
User={uid}
Group={uid}
ExecStart={python} -m ductile serve --config {etc}
WorkingDirectory={state}
UMask=0077
AmbientCapabilities=CAP_SETUID CAP_SETGID
CapabilityBoundingSet=CAP_SETUID CAP_SETGID
NoNewPrivileges=yes
"""


def unit_dir(world: World, *dropins: str, user: str | None = None) -> str:
    """A unit directory the gateway user can read, holding a unit that starts this world."""
    d = Path(tempfile.mkdtemp(prefix="ductile-units-", dir=world.base))
    os.chmod(d, 0o755)
    (d / "ductile.service").write_text(UNIT.format(uid=user or world.gateway_uid, python=PYTHON, etc=world.etc,
                                                   state=world.base / "state"))
    if dropins:
        (d / "ductile.service.d").mkdir(mode=0o755)
        for i, text in enumerate(dropins):
            (d / "ductile.service.d" / f"{i}.conf").write_text("[Service]\n" + text)
    for p in [d, *d.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return str(d)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    require_root()
    w = make_world(None, ["default", "untrusted"], {"probe": "{}"}, {"probe": PROBE_PLUGIN})
    os.chmod(w.base, 0o711)
    yield w
    destroy(w)


@pytest.fixture(scope="module")
def units(world: World) -> str:
    return unit_dir(world)


@pytest.fixture(scope="module")
def no_units(world: World) -> str:
    d = tempfile.mkdtemp(prefix="no-units-", dir=world.base)
    os.chmod(d, 0o755)
    return d


def as_root(world: World, *args: str, env: dict[str, str] | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "ductile", *args, "--config", str(world.etc)], capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1", **(env or {})}, cwd="/", input=input, timeout=120)


def findings(proc: subprocess.CompletedProcess[str]) -> list[dict[str, str]]:
    return json.loads(proc.stdout)["findings"]


def test_doctor_in_a_shell_without_the_caps_reports_the_unit_and_no_error(world: World, units: str) -> None:
    proc = world.run("doctor", "--json", caps="", env={"DUCTILE_UNIT_PATH": units})
    assert proc.returncode == 0, proc.stdout
    found = findings(proc)
    assert not [f for f in found if f["severity"] == "error"], found
    [gate] = [f for f in found if f["field"] == "posture"]
    assert "under ductile.service [capability+accounts] -> enforce" in gate["message"]
    assert f"as uid {world.gateway_uid}" in gate["message"]
    [shell] = [f for f in found if f["field"] == "shell"]
    assert shell["severity"] == "info" and "lacks CAP_SETUID+CAP_SETGID" in shell["message"]
    assert "will enforce" in shell["message"] and "--as-unit" in shell["fix"]


def test_doctor_without_a_unit_judges_the_shell_and_says_there_is_no_unit(world: World, no_units: str) -> None:
    proc = world.run("doctor", "--json", caps="", env={"DUCTILE_UNIT_PATH": no_units})
    assert proc.returncode == 1
    [err] = [f for f in findings(proc) if f["severity"] == "error"]
    assert "boot gate in this shell [no-capability+accounts] would refuse" in err["message"]
    assert f"no installed unit starts this config (searched {no_units})" in err["fix"]


def test_a_unit_that_lost_its_capabilities_is_an_error_with_a_working_fix(world: World) -> None:
    units = unit_dir(world, "AmbientCapabilities=\n")
    proc = world.run("doctor", "--json", caps="", env={"DUCTILE_UNIT_PATH": units})
    assert proc.returncode == 1
    [err] = [f for f in findings(proc) if f["severity"] == "error"]
    assert "under ductile.service [no-capability+accounts] would refuse" in err["message"]
    render = f"ductile deploy render unit --config {world.etc} > {units}/ductile.service"
    assert render in err["fix"]
    # the command in the fix parses; this world's layout is not one render accepts (its account
    # directories are not below the state directory), which it says in one line, not a usage error
    proc = as_root(world, "deploy", "render", "unit")
    assert_one_line_error(proc, "accounts.default.state_dir", "is not below the state directory")


def test_explain_never_tells_an_unconfined_story_after_a_refusal(world: World, no_units: str) -> None:
    proc = world.run("account", "explain", "probe", caps="", env={"DUCTILE_UNIT_PATH": no_units})
    assert proc.returncode == 1
    assert "gate in this shell: refuse [no-capability+accounts]" in proc.stdout
    assert "runs as: nothing: the gateway would refuse to start" in proc.stdout
    assert "/unconfined/" not in proc.stdout and "(unconfined)" not in proc.stdout and "cwd" not in proc.stdout
    info = json.loads(world.run("account", "explain", "probe", "--json", caps="",
                                env={"DUCTILE_UNIT_PATH": no_units}).stdout)
    assert (info["runs"], info["account"], info["cwd"], info["can_write"]) == (False, None, None, [])


def test_explain_with_the_unit_tells_the_units_story(world: World, units: str) -> None:
    proc = world.run("account", "explain", "probe", caps="", env={"DUCTILE_UNIT_PATH": units})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gate under ductile.service: enforce [capability+accounts]" in proc.stdout
    assert "this shell: this shell" in proc.stdout and "lacks CAP_SETUID+CAP_SETGID" in proc.stdout
    assert f"runs as: default (uid {world.accounts['default']}" in proc.stdout
    assert f"cwd/HOME: {world.state_dir('default')}" in proc.stdout


def test_verify_without_the_caps_names_a_command_that_holds_the_wall(world: World, units: str) -> None:
    proc = world.run("account", "verify", "--json", caps="", env={"DUCTILE_UNIT_PATH": units})
    assert proc.returncode == 2
    reasons = {a["not_run"] for a in json.loads(proc.stdout)["accounts"]}
    [reason] = reasons
    hint = reason.split("`")[1]
    assert hint == f"ductile account verify --json --config {world.etc} --as-unit"
    argv = shlex.split(hint)
    proc = subprocess.run([PYTHON, "-m", *argv], capture_output=True, text=True, cwd="/", timeout=120,
                          env={**os.environ, "DUCTILE_UNIT_PATH": units})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    # the probes were spawned by a gateway with the unit's uid, not by root
    assert report["gateway_uid"] == world.gateway_uid and report["posture"] == "enforce"
    assert report["breaches"] == 0 and {a["name"] for a in report["accounts"]} == {"default", "untrusted"}
    setuid_gw = {c["verdict"] for a in report["accounts"] for c in a["checks"] if c["label"] == "setuid(gateway)"}
    assert setuid_gw == {"REFUSED"}


def test_verify_without_the_caps_and_without_a_unit_does_not_offer_as_unit(world: World, no_units: str) -> None:
    proc = world.run("account", "verify", "--json", caps="", env={"DUCTILE_UNIT_PATH": no_units})
    assert proc.returncode == 2
    reasons = {a["not_run"] for a in json.loads(proc.stdout)["accounts"]}
    assert reasons == {"this process lacks CAP_SETUID+CAP_SETGID, so it cannot spawn the probes as the accounts; run it "
                       "from a root shell (no installed unit starts this config, so --as-unit has none to copy)"}


def test_as_unit_runs_a_job_exactly_as_the_units_gateway(world: World, units: str) -> None:
    payload = {"deny": {"key": str(world.key)}, "setuid": [0, world.gateway_uid]}
    proc = as_root(world, "plugin", "run", "probe", "--as-unit", "--json", "--payload", json.dumps(payload),
                   env={"DUCTILE_UNIT_PATH": units})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"posture=enforce cell=capability+accounts gateway_uid={world.gateway_uid}" in proc.stderr
    child = json.loads(proc.stdout)["outcome"]["result"]
    acct = world.accounts["default"]
    assert child["resuid"] == [acct] * 3 and child["groups"] == []
    assert set(child["caps"].values()) == {"0000000000000000"} and child["nnp"] == "1"
    assert child["deny"] == {"key": "EACCES"} and set(child["setuid"].values()) == {"EPERM"}


def test_plugin_run_in_a_shell_without_the_caps_names_the_as_unit_command(world: World, units: str) -> None:
    proc = world.run("plugin", "run", "probe", caps="", env={"DUCTILE_UNIT_PATH": units})
    line = assert_one_line_error(proc, "boot gate (no-capability+accounts)", "accounts are configured")
    assert f"from a root shell run `ductile plugin run probe --config {world.etc} --as-unit`" in line


def test_as_unit_refuses_without_root_or_without_a_unit(world: World, units: str, no_units: str) -> None:
    proc = world.run("doctor", "--as-unit", caps="", env={"DUCTILE_UNIT_PATH": units})
    assert_one_line_error(proc, "--as-unit", "only root", "fix: run it from a root shell")
    proc = as_root(world, "doctor", "--as-unit", env={"DUCTILE_UNIT_PATH": no_units})
    line = assert_one_line_error(proc, "no installed systemd unit starts", f"searched {no_units}")
    assert f"fix: install it first: ductile deploy render unit --config {world.etc} >" in line


@pytest.fixture(scope="module")
def named_world() -> Iterator[tuple[World, NamedUser]]:
    require_root()
    user = NamedUser()
    try:
        w = make_world(user.uid, ["default"], {}, {})
    except BaseException:
        user.delete()
        raise
    yield w, user
    destroy(w)
    user.delete()


def test_the_age_key_hint_for_root_runs_the_same_command_as_the_gateway(named_world: tuple[World, NamedUser]) -> None:
    world, user = named_world
    proc = as_root(world, "vault", "set", "api-ops", input="s3cret-value\n")
    line = assert_one_line_error(proc, str(world.key), f"owned by uid {user.uid}")
    assert "chown" not in line  # root taking the key would lock the gateway out of its own vault
    hint = line.split("fix: run it as the key's owner: ", 1)[1].rstrip(")")
    assert hint == f"runuser -u {user.name} -- ductile vault set api-ops --config {world.etc}"
    venv_bin = os.path.dirname(PYTHON)
    assert shutil.which("runuser")
    proc = subprocess.run(shlex.split(hint), capture_output=True, text=True, input="s3cret-value\n", cwd="/",
                          env={**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listed = world.run("vault", "list", "--json", caps="")
    assert listed.returncode == 0 and "api-ops" in listed.stdout and "s3cret" not in listed.stdout
