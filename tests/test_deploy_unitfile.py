"""Reading an installed unit back (pure), finding the one that runs a config (edge, on temp
directories), and the setpriv line --as-unit builds from it (pure)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
from conftest import REPO

from ductile.deploy.installed import Identity, read_unit, unit_dirs, units_running
from ductile.deploy.unitfile import ALL_CAPS, SYSTEMD_PATH, parse_unit, runs_config
from ductile.hints import as_unit, as_user
from ductile.runtime.asunit import absolute_args, setpriv_argv, strip_flag, unit_env

SYSTEMD = REPO / "deploy" / "systemd"


def unit(text: str, *dropins: str, name: str = "ductile.service"):
    files = [(f"/u/{name}", "[Service]\n" + text)] + [(f"/u/{name}.d/{i}.conf", "[Service]\n" + d) for i, d in enumerate(dropins)]
    return parse_unit(name, files)


def test_the_shipped_confined_unit_reads_back_as_rendered() -> None:
    f = parse_unit("ductile.service", [(str(SYSTEMD / "ductile.service"), (SYSTEMD / "ductile.service").read_text())])
    assert (f.user, f.group, f.no_new_privs, f.umask, f.working_directory) == ("ductile", "ductile", True, 0o077, "/var/lib/ductile")
    assert f.ambient == f.bounding == f.capabilities == {"CAP_SETUID", "CAP_SETGID"}
    assert f.can_drop and not f.runs_as_root
    assert f.exec_start == ("/opt/ductile/venv/bin/ductile", "serve", "--config", "/etc/ductile")
    assert f.program == ("/opt/ductile/venv/bin/ductile",) and f.config_arg == "/etc/ductile"
    assert f.describe() == "ductile.service (User=ductile, CAP_SETGID CAP_SETUID)"


def test_the_shipped_admin_unit_grants_nothing() -> None:
    text = (SYSTEMD / "ductile-admin.service").read_text()
    f = parse_unit("ductile-admin.service", [("x", text)])
    assert f.user == "ductile-admin" and f.bounding == frozenset() and f.capabilities == frozenset()
    assert not f.can_drop and f.config_arg == "/etc/ductile-admin"


@pytest.mark.parametrize(("lines", "dropins", "can_drop", "caps"), [
    # merged over several lines
    ("AmbientCapabilities=CAP_SETUID\nAmbientCapabilities=CAP_SETGID\nUser=gw", (), True, {"CAP_SETUID", "CAP_SETGID"}),
    # names without CAP_ and in lower case are the same capabilities
    ("AmbientCapabilities=setuid setgid\nUser=gw", (), True, {"CAP_SETUID", "CAP_SETGID"}),
    # a drop-in resets the ambient set: the gateway would start without them
    ("AmbientCapabilities=CAP_SETUID CAP_SETGID\nUser=gw", ("AmbientCapabilities=",), False, set()),
    # the bounding set wins over the ambient set
    ("AmbientCapabilities=CAP_SETUID CAP_SETGID\nCapabilityBoundingSet=CAP_SETUID\nUser=gw", (), False, {"CAP_SETUID"}),
    # ~ inverts: everything but SETGID may stay
    ("AmbientCapabilities=CAP_SETUID CAP_SETGID\nCapabilityBoundingSet=~CAP_SETGID\nUser=gw", (), False, {"CAP_SETUID"}),
    # an empty bounding set (the admin unit) leaves nothing
    ("AmbientCapabilities=CAP_SETUID CAP_SETGID\nCapabilityBoundingSet=\nUser=gw", (), False, set()),
    # an inverted ambient line starts from everything
    ("AmbientCapabilities=~CAP_KILL\nCapabilityBoundingSet=CAP_SETUID CAP_SETGID CAP_KILL\nUser=gw", (), True,
     {"CAP_SETUID", "CAP_SETGID"}),
    # no User=: root, which holds its whole bounding set
    ("ExecStart=/x serve", (), True, set(ALL_CAPS)),
    # User= moved to root by a drop-in
    ("User=gw", ("User=root",), True, set(ALL_CAPS)),
    # a + prefix runs ExecStart with full privileges whatever User= says
    ("User=gw\nExecStart=+/x serve --config /c", (), True, set(ALL_CAPS)),
])
def test_capabilities_follow_systemd_merge_rules(lines: str, dropins: tuple[str, ...], can_drop: bool,
                                                 caps: set[str]) -> None:
    f = unit(lines, *dropins)
    assert f.can_drop is can_drop
    assert f.capabilities == caps


def test_other_sections_comments_and_continuations() -> None:
    f = parse_unit("x.service", [("x", "[Unit]\nUser=nobody\n# User=commented\n[Service]\n; also a comment\n"
                                       "ExecStart=/opt/v/bin/ductile \\\n   serve --config '/etc/my ductile'\n"
                                       "Environment=A=1 \"B=two words\"\nEnvironment=C=3\nUMask=bogus\n")])
    assert f.user == "root" and f.umask == 0o022
    assert f.exec_start == ("/opt/v/bin/ductile", "serve", "--config", "/etc/my ductile")
    assert dict(f.environment) == {"A": "1", "B": "two words", "C": "3"}
    assert unit("Environment=A=1", "Environment=").environment == ()
    assert unit("ExecStart=/a serve --config /c", "ExecStart=", "ExecStart=/b serve -c /d").exec_start == ("/b", "serve", "-c", "/d")


@pytest.mark.parametrize(("exec_start", "runs"), [
    ("/opt/ductile/venv/bin/ductile serve --config /etc/ductile", True),
    ("/opt/ductile/venv/bin/ductile serve --config /etc/ductile/", True),
    ("/opt/ductile/venv/bin/ductile serve --config=/etc/ductile/config.yaml", True),
    ("/usr/bin/python3 -m ductile serve -c /etc/ductile", True),
    ("/opt/ductile/venv/bin/ductile serve --config /etc/ductile-admin", False),
    ("/opt/ductile/venv/bin/ductile doctor --config /etc/ductile", False),
    ("/opt/ductile/venv/bin/ductile serve", False),
])
def test_which_unit_runs_a_config(exec_start: str, runs: bool) -> None:
    assert runs_config(unit(f"ExecStart={exec_start}"), "/etc/ductile", "/etc/ductile/config.yaml") is runs


def test_program_is_execstart_up_to_serve() -> None:
    assert unit("ExecStart=/usr/bin/python3 -m ductile serve -c /c").program == ("/usr/bin/python3", "-m", "ductile")
    assert unit("ExecStart=/usr/bin/env ductile doctor").program == ()


def test_setpriv_line_for_the_shipped_unit() -> None:
    f = parse_unit("ductile.service", [("x", (SYSTEMD / "ductile.service").read_text())])
    argv = setpriv_argv(f, Identity(995, 994), [994], [*f.program, "account", "verify"])
    assert argv == ["setpriv", "--reuid=995", "--regid=994", "--groups=994",
                    "--inh-caps=-all,+setgid,+setuid", "--ambient-caps=-all,+setgid,+setuid",
                    "--bounding-set=-all,+setgid,+setuid", "--no-new-privs",
                    "--", "/opt/ductile/venv/bin/ductile", "account", "verify"]


def test_setpriv_line_without_capabilities_or_passwd_entry() -> None:
    f = parse_unit("a.service", [("x", (SYSTEMD / "ductile-admin.service").read_text())])
    argv = setpriv_argv(f, Identity(70000, 70000), None, ["/p", "doctor"])
    assert argv[1:6] == ["--reuid=70000", "--regid=70000", "--clear-groups", "--inh-caps=-all", "--ambient-caps=-all"]
    assert "--bounding-set=-all" in argv and "--no-new-privs" in argv


def test_unit_env_is_systemds_not_the_shell() -> None:
    f = unit("User=gw\nEnvironment=TZ=UTC")
    env = unit_env(f, "/var/lib/ductile", "gw", {"PATH": "/root/.pyenv/shims:/usr/bin", "AWS_SECRET": "x",
                                                   "NO_COLOR": "1", "LANG": "de_DE.UTF-8"})
    assert env["PATH"] == SYSTEMD_PATH and "AWS_SECRET" not in env
    assert env["TZ"] == "UTC" and env["NO_COLOR"] == "1" and env["LANG"] == "de_DE.UTF-8"
    assert env["DUCTILE_AS_UNIT"] == "ductile.service" and env["HOME"] == "/var/lib/ductile"


def test_hints_are_the_command_again() -> None:
    argv = ["ductile", "vault", "set", "api ops", "--config", "/etc/ductile"]
    assert shlex.split(as_user("ductile", argv)) == ["runuser", "-u", "ductile", "--", *argv]
    assert as_unit(["ductile", "doctor", "--as-unit"]) == "ductile doctor --as-unit"
    assert strip_flag(["doctor", "--as-unit", "-c", "/x"]) == ["doctor", "-c", "/x"]


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_search_follows_systemd_precedence_and_dropins(tmp_path: Path) -> None:
    etc, lib = tmp_path / "etc", tmp_path / "lib"
    svc = "[Service]\nUser=ductile\nExecStart=/v/ductile serve --config /etc/ductile\nAmbientCapabilities={}\n"
    write(lib / "ductile.service", svc.format("CAP_SETUID CAP_SETGID"))
    write(etc / "ductile.service", svc.format("CAP_SETUID"))                 # /etc hides /usr/lib
    write(lib / "ductile.service.d/10-caps.conf", "[Service]\nAmbientCapabilities=CAP_SETGID\n")
    write(etc / "ductile.service.d/20-user.conf", "[Service]\nUser=other\n")
    write(lib / "ductile.service.d/20-user.conf", "[Service]\nUser=hidden\n")  # same name: /etc wins
    write(lib / "other.service", "[Service]\nExecStart=/v/ductile serve --config /etc/elsewhere\n")
    (etc / "masked.service").symlink_to("/dev/null")
    dirs = (str(etc), str(lib))
    f = read_unit("ductile.service", dirs)
    assert f is not None and f.path == str(etc / "ductile.service")
    assert f.user == "other" and f.can_drop
    assert f.sources[1:] == (str(lib / "ductile.service.d/10-caps.conf"), str(etc / "ductile.service.d/20-user.conf"))
    env = {"DUCTILE_UNIT_PATH": os.pathsep.join(dirs)}
    assert unit_dirs(env) == dirs and unit_dirs({})[0] == "/etc/systemd/system"
    assert [u.name for u in units_running("/etc/ductile", "/etc/ductile/config.yaml", env)] == ["ductile.service"]
    assert units_running("/etc/nowhere", "/etc/nowhere/config.yaml", env) == []


@pytest.mark.parametrize(("args", "want"), [
    (["doctor", "--config", "etc"], ["doctor", "--config", "/home/op/etc"]),
    (["doctor", "-c", "/etc/ductile"], ["doctor", "-c", "/etc/ductile"]),
    (["doctor", "--config=etc/config.yaml"], ["doctor", "--config=/home/op/etc/config.yaml"]),
    (["plugin", "run", "echo", "--payload", "@job.json"], ["plugin", "run", "echo", "--payload", "@/home/op/job.json"]),
    (["plugin", "run", "echo", "--payload", '{"x": 1}'], ["plugin", "run", "echo", "--payload", '{"x": 1}']),
    (["plugin", "run", "echo", "--payload=-"], ["plugin", "run", "echo", "--payload=-"]),
])
def test_relative_paths_survive_the_move_to_working_directory(args: list[str], want: list[str]) -> None:
    assert absolute_args(args, "/home/op") == want
