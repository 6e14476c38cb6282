"""The exec'd drop decided as data (privsep.dropper), and the argv the launch edge hands
to ``subprocess`` (pytest-subprocess: the argv contract, no process started)."""

from __future__ import annotations

import stat

import pytest

from ductile.privsep import dropper
from ductile.privsep.caps import ProcStatus
from ductile.privsep.dropper import CAPSH, SETPRIV as SETPRIV_TOOL, Choice, HostDropper, choose, judge_chain, unsafe_env, verify_drop
from ductile.runtime import launch as launch_mod

DIR = stat.S_IFDIR | 0o755
EXE = stat.S_IFREG | 0o755
SETPRIV = "/usr/bin/setpriv"
CAPSH_PATH = "/usr/sbin/capsh"
VIA_SETPRIV = HostDropper(SETPRIV, "setpriv", "")
VIA_CAPSH = HostDropper(CAPSH_PATH, "capsh", "")
GOOD_CHAIN = [("/", DIR, 0), ("/usr", DIR, 0), ("/usr/bin", DIR, 0), (SETPRIV, EXE, 0)]


def test_argv_drops_every_id_group_and_capability_set() -> None:
    assert dropper.argv(VIA_SETPRIV, 61001, 61002, ["/bin/sh", "-c", "x", "ductile-spawn"]) == [
        SETPRIV, "--reuid=61001", "--regid=61002", "--clear-groups", "--inh-caps=-all", "--ambient-caps=-all",
        "--", "/bin/sh", "-c", "x", "ductile-spawn"]
    # capsh runs its --shell with the words after "--": gid, groups, then uid, numbers only
    assert dropper.argv(VIA_CAPSH, 61001, 61002, ["/bin/sh", "-c", "x", "ductile-spawn"]) == [
        CAPSH_PATH, "--shell=/bin/sh", "--gid=61002", "--groups=", "--uid=61001", "--inh=", "--noamb",
        "--", "-c", "x", "ductile-spawn"]


@pytest.mark.parametrize("env, unsafe", [
    ({"PATH": "/bin", "HOME": "/h", "LANG": "C", "TMPDIR": "/h/tmp", "PYTHONNOUSERSITE": "1"}, []),
    ({"LD_PRELOAD": "/x.so", "LD_LIBRARY_PATH": "/x"}, ["LD_LIBRARY_PATH", "LD_PRELOAD"]),
    ({"GCONV_PATH": "/x", "LOCPATH": "/x", "GLIBC_TUNABLES": "a=1", "MALLOC_ARENA_MAX": "2"},
     ["GCONV_PATH", "GLIBC_TUNABLES", "LOCPATH", "MALLOC_ARENA_MAX"]),
    ({"ld_preload": "/x.so", "NLSPATH": "/x"}, ["NLSPATH"]),  # the loader reads exact, upper-case names
])
def test_unsafe_environment_names(env: dict[str, str], unsafe: list[str]) -> None:
    assert unsafe_env(env) == unsafe


@pytest.mark.parametrize("chain, why", [
    (GOOD_CHAIN, None),
    ([], "not found"),
    ([("/", DIR, 0), ("/usr", DIR, 1000), ("/usr/bin", DIR, 0), (SETPRIV, EXE, 0)], "/usr is owned by uid 1000"),
    ([("/", DIR, 0), ("/usr", DIR, 0), ("/usr/bin", stat.S_IFDIR | 0o775, 0), (SETPRIV, EXE, 0)],
     "/usr/bin is writable by its group or others"),
    ([("/", DIR, 0), (SETPRIV, stat.S_IFREG | 0o757, 0)], f"{SETPRIV} is writable by its group or others"),
    ([("/", DIR, 0), (SETPRIV, EXE, 61001)], f"{SETPRIV} is owned by uid 61001"),
    ([("/", DIR, 0), (SETPRIV, DIR, 0)], "is not a regular file"),
    ([("/", DIR, 0), (SETPRIV, stat.S_IFREG | 0o644, 0)], "is not executable"),
    ([("/", DIR, 0), (SETPRIV, stat.S_IFREG | stat.S_ISUID | 0o755, 0)], "is set-id"),
])
def test_judge_chain(chain: list[tuple[str, int, int]], why: str | None) -> None:
    got = judge_chain(chain)
    assert got == why if why is None else (got is not None and why in got)


HOST = VIA_SETPRIV
SAFE = {"PATH": "/bin", "HOME": "/h"}


@pytest.mark.parametrize("host, kw, via, why", [
    (HOST, {}, VIA_SETPRIV, "vfork + setpriv"),
    (VIA_CAPSH, {}, VIA_CAPSH, "vfork + capsh"),
    (HOST, {"drops": False}, None, "not dropped"),
    (HostDropper(None, "", "/usr/bin/setpriv: not found"), {}, None, "no dropper: /usr/bin/setpriv: not found"),
    (HOST, {"can_drop": False}, None, "lacks CAP_SETUID"),
    (HOST, {"status_readable": False}, None, "/proc hides"),
    (HOST, {"executable": False}, None, "Landlock ruleset does not let /usr/bin/setpriv be executed"),
    (HOST, {"env": {"LD_PRELOAD": "/x.so"}}, None, "the environment holds LD_PRELOAD"),
])
def test_choose(host: HostDropper, kw: dict, via: HostDropper | None, why: str) -> None:  # type: ignore[type-arg]
    args = {"drops": True, "can_drop": True, "status_readable": True, "env": SAFE, "executable": True} | kw
    got = choose(host, **args)
    assert isinstance(got, Choice) and got.via == via and why in got.why


def _status(uids=(61001,) * 4, gids=(61001,) * 4, groups=(), **caps: int) -> ProcStatus:  # type: ignore[no-untyped-def]
    base = {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0x1ffffffffff, "CapAmb": 0} | caps
    return ProcStatus(base, 1, tuple(uids), tuple(gids), tuple(groups))


@pytest.mark.parametrize("status, why, identity", [
    (_status(), None, None),
    (_status(uids=(0, 0, 0, 0)), "runs as uid 0/0/0/0, not 61001", True),
    (_status(uids=(61001, 61001, 0, 61001)), "runs as uid 61001/61001/0/61001", True),  # a saved uid left behind
    (_status(uids=()), "runs as uid ?", True),
    (_status(gids=(61001, 0, 61001, 61001)), "runs as gid 61001/0/61001/61001, not 61001", True),
    (_status(groups=(0,)), "kept supplementary groups 0", True),
    (_status(CapAmb=0xc0), "CapAmb not empty", False),
    (_status(CapPrm=0xc0, CapEff=0xc0), "CapPrm, CapEff not empty", False),
    (_status(CapInh=0x80), "CapInh not empty", False),
])
def test_verify_drop(status: ProcStatus, why: str | None, identity: bool | None) -> None:
    got = verify_drop(status, 61001, 61001)
    if why is None:
        assert got is None
    else:
        assert got is not None and why in got.why and got.identity is identity


def test_launch_hands_the_drop_to_setpriv_and_not_to_subprocess(fp) -> None:  # type: ignore[no-untyped-def]
    """With ``setpriv`` the Popen gets the exec'd drop and no user=/group=/extra_groups=
    (which would stop CPython from using vfork); without it, the in-process drop."""
    wrapped = [SETPRIV, "--reuid=61001", "--regid=61002", "--clear-groups", "--inh-caps=-all",
               "--ambient-caps=-all", "--", "/bin/sh", "-c", "exit 0"]
    fp.register(wrapped)
    fp.register(["/bin/sh", "-c", "exit 0"])
    proc = launch_mod.launch(["/bin/sh", "-c", "exit 0"], uid=61001, gid=61002, env={}, via=VIA_SETPRIV)
    proc.wait()
    launch_mod.forget(proc)
    assert fp.call_count(wrapped) == 1
    by_capsh = [CAPSH_PATH, "--shell=/bin/sh", "--gid=61002", "--groups=", "--uid=61001", "--inh=", "--noamb",
                "--", "-c", "exit 0"]
    fp.register(by_capsh)
    proc = launch_mod.launch(["/bin/sh", "-c", "exit 0"], uid=61001, gid=61002, env={}, via=VIA_CAPSH)
    proc.wait()
    launch_mod.forget(proc)
    assert fp.call_count(by_capsh) == 1
    proc = launch_mod.launch(["/bin/sh", "-c", "exit 0"], uid=None, gid=None, env={}, via=VIA_SETPRIV)
    proc.wait()
    launch_mod.forget(proc)
    assert fp.call_count(["/bin/sh", "-c", "exit 0"]) == 1  # nothing to drop: nothing wrapped


def test_launch_keeps_the_in_process_drop_without_setpriv(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    seen: dict = {}  # type: ignore[type-arg]

    class Recorder:
        def __init__(self, argv, **kw):  # type: ignore[no-untyped-def]
            seen.update(argv=argv, **kw)
            self.pid = 4242

    monkeypatch.setattr(launch_mod.subprocess, "Popen", Recorder)
    launch_mod.forget(launch_mod.launch(["/bin/true"], uid=61001, gid=61002, env={}))
    assert seen["argv"] == ["/bin/true"]
    assert (seen["user"], seen["group"], seen["extra_groups"]) == (61001, 61002, [])
    assert seen["start_new_session"] is True
    seen.clear()
    launch_mod.forget(launch_mod.launch(["/bin/true"], uid=61001, gid=61002, env={}, via=VIA_SETPRIV))
    assert "user" not in seen and "group" not in seen and "extra_groups" not in seen
    assert seen["argv"][0] == SETPRIV and seen["start_new_session"] is True


def test_capsh_first_then_setpriv_each_only_if_it_knows_every_option(fp, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """libcap's capsh is preferred (numbers only, half the start-up time); one without
    --noamb (old libcap) gives way to setpriv; a setpriv without --ambient-caps (util-linux
    before 2.32) to the in-process drop, and the host says why. Each probe is ``--help``,
    run once per process, as the gateway."""
    from ductile.privsep import dropper_host

    def chain(path: str) -> list[tuple[str, int, int]]:
        if path not in (SETPRIV, CAPSH_PATH):
            return []
        return [("/", DIR, 0), (path.rsplit("/", 1)[0], DIR, 0), (path, EXE, 0)]

    monkeypatch.setattr(dropper_host, "chain_facts", chain)
    full_capsh = " ".join(CAPSH.needs)
    full_setpriv = " ".join(SETPRIV_TOOL.needs)
    try:
        fp.register([CAPSH_PATH, "--help"], stdout=full_capsh)
        dropper_host.forget()
        assert dropper_host.host_dropper() == VIA_CAPSH

        fp.register([CAPSH_PATH, "--help"], stdout=full_capsh.replace("--noamb", ""))
        fp.register([SETPRIV, "--help"], stdout=full_setpriv)
        dropper_host.forget()
        assert dropper_host.host_dropper() == VIA_SETPRIV

        fp.register([CAPSH_PATH, "--help"], stdout=full_capsh.replace("--noamb", ""))
        fp.register([SETPRIV, "--help"], stdout=full_setpriv.replace("--ambient-caps", ""))
        dropper_host.forget()
        host = dropper_host.host_dropper()
        assert host.path is None
        assert "/usr/sbin/capsh: too old: no --noamb" in host.why_not
        assert "/usr/bin/setpriv: too old: no --ambient-caps" in host.why_not
        assert fp.call_count([CAPSH_PATH, "--help"]) == 3 and fp.call_count([SETPRIV, "--help"]) == 2
    finally:
        dropper_host.forget()


@pytest.mark.parametrize("tool", [CAPSH, SETPRIV_TOOL], ids=["capsh", "setpriv"])
def test_the_host_tools_list_every_option_the_drop_uses(tool: dropper.Tool) -> None:
    """The real binaries on this machine (the wall tests exec both)."""
    from ductile.privsep import dropper_host

    path = next((p for p in tool.paths if dropper_host.chain_facts(p)), None)
    assert path is not None, f"{tool.kind} is not installed"
    assert dropper_host.judge_chain(dropper_host.chain_facts(path)) is None
    assert dropper.missing_options(tool, dropper_host.help_text(path)) == []
