"""account list | verify | explain, against real accounts (root and cap-only gateways)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import EXAMPLES
from wallworld import MARKER_PLUGIN, PROBE_PLUGIN, PYTHON, World, destroy, make_world, require_root

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module", params=["root", "cap-only"])
def world(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    require_root()
    w = make_world(0 if request.param == "root" else None, ["default", "untrusted", "ops"],
                   {"probe": "{run_as: ops}", "mark": "{}"}, {"probe": PROBE_PLUGIN, "mark": MARKER_PLUGIN})
    yield w
    destroy(w)


def verify(world: World, *names: str):  # type: ignore[no-untyped-def]
    proc = world.run("account", "verify", *names, "--json")
    return proc, json.loads(proc.stdout)


def test_verify_holds_every_check(world: World) -> None:
    proc, report = verify(world)
    assert proc.returncode == 0, proc.stdout
    assert report["breaches"] == 0 and report["posture"] == "enforce"
    by_name = {a["name"]: a for a in report["accounts"]}
    assert set(by_name) == {"default", "untrusted", "ops"}
    for a in report["accounts"]:
        verdicts = {(c["label"], c["verdict"]) for c in a["checks"]}
        for target in ("age key", "config dir", "config file", "state DB", "vault file"):
            assert (target, "DENIED") in verdicts, (a["name"], target)
        assert sum(1 for label, v in verdicts if label.startswith("sibling") and v == "DENIED") == 2
        assert ("own state_dir", "WRITABLE") in verdicts
        assert ("capabilities", "ZERO") in verdicts and ("setuid(0)", "REFUSED") in verdicts
        assert all(c["ok"] is True for c in a["checks"]), a["checks"]
        for check in (("session", "NEW SESSION"), ("controlling terminal", "NONE"), ("TIOCSTI", "REFUSED"),
                      ("leftover processes", "KILLED"), ("landlock read", "DENIED"), ("landlock connect", "DENIED"),
                      ("landlock signal", "DENIED")):
            assert check in verdicts, (a["name"], check)
    assert report["containment"]["mode"] == ("cgroup" if world.gateway_uid == 0 else "sweep"), report["containment"]
    assert report["containment"]["landlock_abi"] >= 6  # this host: 7
    ops = {c["label"]: c["verdict"] for c in by_name["ops"]["checks"]}
    assert ops["plugin probe"] == "EXECUTABLE" and ops["plugin probe interpreter"] == "EXECUTABLE"
    assert "plugin mark" in {c["label"] for c in by_name["default"]["checks"]}
    if world.gateway_uid:
        assert ("setuid(gateway)", "REFUSED") in {(c["label"], c["verdict"]) for c in by_name["ops"]["checks"]}


def test_verify_proves_containment_from_an_operators_terminal(world: World) -> None:
    """Under a pty (where /dev/tty would be the operator's terminal) the probe still has
    none, cannot TIOCSTI, and the daemon it leaves is killed; the mode is named."""
    from conftest import run_in_pty
    from wallworld import WORLD_ENV

    code, raw = run_in_pty(world.command("account", "verify", "ops"), env=WORLD_ENV, timeout=120)
    text = raw.decode(errors="replace")
    assert code == 0, text
    assert "wall HELD" in text and "containment: " in text, text
    for verdict in ("NEW SESSION", "NONE", "REFUSED", "KILLED"):
        assert verdict in text, (verdict, text)


def test_verify_reports_a_breach_and_exits_1(world: World) -> None:
    sibling = world.state_dir("untrusted")
    os.chmod(sibling, 0o755)
    try:
        proc, report = verify(world, "default")
        text = world.run("account", "verify", "default")
    finally:
        os.chmod(sibling, 0o700)
    assert proc.returncode == 1 and text.returncode == 1
    [acct] = report["accounts"]
    bad = [c for c in acct["checks"] if c["ok"] is False]
    assert [(c["label"], c["verdict"]) for c in bad] == [("sibling untrusted", "READABLE")]
    assert "READABLE (BREACH)" in text.stdout and "wall BREACHED: 1 breach(es)" in text.stdout


def test_verify_never_passes_what_it_could_not_check(world: World) -> None:
    plugin = world.base / "plugins" / "probe" / "run.py"
    os.chmod(plugin, 0o700)  # the account can no longer execute it
    try:
        proc, report = verify(world, "ops")
    finally:
        os.chmod(plugin, 0o755)
    assert proc.returncode == 1
    assert ("plugin probe", "NOT EXECUTABLE") in {(c["label"], c["verdict"]) for c in report["accounts"][0]["checks"]}
    moved = world.state_dir("ops").with_name("ops-away")
    world.state_dir("ops").rename(moved)
    try:
        proc, report = verify(world, "ops")
        text = world.run("account", "verify", "ops").stdout
    finally:
        moved.rename(world.state_dir("ops"))
    assert proc.returncode == 2 and report["accounts"][0]["not_run"] and probe_checks(report["accounts"][0]) == []
    assert "NOT RUN" in text and "INCOMPLETE" in text


def probe_checks(account: dict) -> list[dict]:  # type: ignore[type-arg]
    """The checks the probe made (the side-door rows come from the host's files, not the probe)."""
    return [c for c in account["checks"] if not c["label"].startswith("side door")]


def test_verify_without_the_capability_runs_nothing_and_says_so() -> None:
    require_root()
    w = make_world(None, ["default"], {}, {})
    try:
        proc = w.run("account", "verify", "--json", caps="")
        report = json.loads(proc.stdout)
        assert proc.returncode == 2
        assert all(a["not_run"] and not probe_checks(a) for a in report["accounts"])
    finally:
        destroy(w)


def test_list_and_explain(world: World) -> None:
    rows = json.loads(world.run("account", "list", "--json").stdout)["accounts"]
    assert {r["name"]: r["plugins"] for r in rows}["ops"] == ["probe"]
    assert {r["name"]: r["plugins"] for r in rows}["default"] == ["mark"]
    info = json.loads(world.run("account", "explain", "probe", "--json").stdout)
    assert info["account"]["name"] == "ops" and info["account"]["source"] == "granted"
    assert info["gate"]["posture"] == "enforce" and info["cwd"] == str(world.state_dir("ops"))
    assert "untrusted" in info["on_fingerprint_mismatch"]
    assert set(info["env_keys"]) >= {"HOME", "XDG_CACHE_HOME", "PATH"}
    text = world.run("account", "explain", "mark").stdout
    assert "source default" in text and "no run_as grant" in text


def test_example_config_verifies_clean() -> None:
    """The shipped example, provisioned as its comments say, holds every check."""
    require_root()
    base = Path(tempfile.mkdtemp(prefix="ductile-example-", dir="/tmp"))
    os.chmod(base, 0o711)
    created = []
    try:
        shutil.copytree(EXAMPLES / "etc", base / "etc")
        shutil.copytree(EXAMPLES / "plugins", base / "plugins")
        for d in (base / "plugins").rglob("*"):
            os.chmod(d, 0o755 if d.is_dir() or d.suffix == ".py" else 0o644)
        os.chmod(base / "plugins", 0o755)
        for name, uid in (("default", 61001), ("untrusted", 61002)):
            sd = Path(f"/var/lib/ductile-example/accounts/{name}")
            if not sd.exists():
                created.append(sd)
            sd.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
            os.chmod(sd.parent, 0o711)
            os.chmod(sd.parent.parent, os.stat(sd.parent.parent).st_mode | stat.S_IXOTH)
            sd.mkdir(exist_ok=True, mode=0o700)
            os.chown(sd, uid, uid)
            os.chmod(sd, 0o700)
        cfg = str(base / "etc")

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([PYTHON, "-m", "ductile", *args, "--config", cfg], capture_output=True, text=True,
                                  env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1"}, timeout=120)

        assert cli("vault", "init").returncode == 0
        ran = cli("plugin", "run", "echo", "--payload", '{"hi": 1}')  # boots: reconciles the config dir to 0700
        assert ran.returncode == 0, ran.stderr
        assert "uid 61001" in ran.stderr
        proc = cli("account", "verify")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "wall HELD: 0 breach(es), 0 check(s) not run" in proc.stdout
        assert proc.stdout.count("DENIED") >= 2 * 6 and proc.stdout.count("WRITABLE") == 2
    finally:
        shutil.rmtree(base, ignore_errors=True)
        for sd in created:
            shutil.rmtree(sd, ignore_errors=True)
        if created and not any(Path("/var/lib/ductile-example/accounts").iterdir()):
            shutil.rmtree("/var/lib/ductile-example", ignore_errors=True)


def test_doctor_posture_section(world: World) -> None:
    report = json.loads(world.run("doctor", "--json").stdout)
    posture = [f for f in report["findings"] if f["category"] == "privsep"]
    assert any(f["field"] == "posture" and "enforce" in f["message"] for f in posture)
    plugin = world.base / "plugins" / "probe" / "run.py"
    source = plugin.read_text()
    plugin.write_text(source.replace("#!/usr/bin/python3", "#!/root/.pyenv/shims/python3", 1))
    try:
        report = json.loads(world.run("doctor", "--json").stdout)
    finally:
        plugin.write_text(source)
    if world.gateway_uid == 0:  # root can vouch for the interpreter but the account cannot run it
        warn = [f for f in report["findings"] if f["severity"] == "warning" and f["field"] == "plugins.probe"]
        assert warn and "interpreter /root/.pyenv/shims/python3" in warn[0]["message"]
    else:  # a cap-only gateway cannot even look at it: the trust checks cannot vouch for it, so it is skipped
        skip = [f for f in report["findings"] if f["field"] == "trust.interpreter"]
        assert skip and skip[0]["severity"] == "error" and "/root/.pyenv" in skip[0]["message"]


def test_doctor_warns_about_secrets_while_unconfined() -> None:
    require_root()
    w = make_world(None, [], {"mark": "{requires_vault: true}"}, {"mark": MARKER_PLUGIN})
    try:
        report = json.loads(w.run("doctor", "--json", caps="").stdout)
        fields = {f["field"]: f for f in report["findings"] if f["category"] == "privsep"}
        assert "unconfined" in fields["posture"]["message"]
        assert fields["secrets"]["severity"] == "warning" and "any plugin can read the age key" in fields["secrets"]["message"]
    finally:
        destroy(w)


def test_verify_with_no_accounts_is_not_a_pass(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("plugin_roots: []\napi: {enabled: false}\n")
    proc = subprocess.run([PYTHON, "-m", "ductile", "account", "verify", "--config", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no accounts are configured" in proc.stdout and "HELD" not in proc.stdout
