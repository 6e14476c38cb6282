"""The exec'd drop decided as data (privsep.dropper), and the argv the launch edge hands
to ``subprocess`` (pytest-subprocess: the argv contract, no process started)."""

from __future__ import annotations

import stat

import pytest

from ductile.privsep import dropper
from ductile.privsep.caps import ProcStatus
from ductile.privsep.dropper import Choice, HostDropper, choose, judge_chain, unsafe_env, verify_drop
from ductile.runtime import launch as launch_mod

DIR = stat.S_IFDIR | 0o755
EXE = stat.S_IFREG | 0o755
SETPRIV = "/usr/bin/setpriv"
GOOD_CHAIN = [("/", DIR, 0), ("/usr", DIR, 0), ("/usr/bin", DIR, 0), (SETPRIV, EXE, 0)]


def test_argv_drops_every_id_group_and_capability_set() -> None:
    assert dropper.argv(SETPRIV, 61001, 61002, ["/bin/sh", "-c", "x"]) == [
        SETPRIV, "--reuid=61001", "--regid=61002", "--clear-groups", "--inh-caps=-all", "--ambient-caps=-all",
        "--", "/bin/sh", "-c", "x"]


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


HOST = HostDropper(SETPRIV, "")
SAFE = {"PATH": "/bin", "HOME": "/h"}


@pytest.mark.parametrize("host, kw, setpriv, why", [
    (HOST, {}, SETPRIV, "vfork + setpriv"),
    (HOST, {"drops": False}, None, "not dropped"),
    (HostDropper(None, "/usr/bin/setpriv: not found"), {}, None, "setpriv: /usr/bin/setpriv: not found"),
    (HOST, {"can_drop": False}, None, "lacks CAP_SETUID"),
    (HOST, {"status_readable": False}, None, "/proc hides"),
    (HOST, {"executable": False}, None, "Landlock ruleset does not let /usr/bin/setpriv be executed"),
    (HOST, {"env": {"LD_PRELOAD": "/x.so"}}, None, "the environment holds LD_PRELOAD"),
])
def test_choose(host: HostDropper, kw: dict, setpriv: str | None, why: str) -> None:  # type: ignore[type-arg]
    args = {"drops": True, "can_drop": True, "status_readable": True, "env": SAFE, "executable": True} | kw
    got = choose(host, **args)
    assert isinstance(got, Choice) and got.setpriv == setpriv and why in got.why


def _status(uids=(61001,) * 4, gids=(61001,) * 4, groups=(), **caps: int) -> ProcStatus:  # type: ignore[no-untyped-def]
    base = {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0x1ffffffffff, "CapAmb": 0} | caps
    return ProcStatus(base, 1, tuple(uids), tuple(gids), tuple(groups))


@pytest.mark.parametrize("status, why", [
    (_status(), None),
    (_status(uids=(0, 0, 0, 0)), "runs as uid 0/0/0/0, not 61001"),
    (_status(uids=(61001, 61001, 0, 61001)), "runs as uid 61001/61001/0/61001"),  # a saved uid left behind
    (_status(uids=()), "runs as uid ?"),
    (_status(gids=(61001, 0, 61001, 61001)), "runs as gid 61001/0/61001/61001, not 61001"),
    (_status(groups=(0,)), "kept supplementary groups 0"),
    (_status(CapAmb=0xc0), "CapAmb not empty"),
    (_status(CapPrm=0xc0, CapEff=0xc0), "CapPrm, CapEff not empty"),
    (_status(CapInh=0x80), "CapInh not empty"),
])
def test_verify_drop(status: ProcStatus, why: str | None) -> None:
    got = verify_drop(status, 61001, 61001)
    assert got == why if why is None else (got is not None and why in got)


def test_launch_hands_the_drop_to_setpriv_and_not_to_subprocess(fp) -> None:  # type: ignore[no-untyped-def]
    """With ``setpriv`` the Popen gets the exec'd drop and no user=/group=/extra_groups=
    (which would stop CPython from using vfork); without it, the in-process drop."""
    wrapped = [SETPRIV, "--reuid=61001", "--regid=61002", "--clear-groups", "--inh-caps=-all",
               "--ambient-caps=-all", "--", "/bin/sh", "-c", "exit 0"]
    fp.register(wrapped)
    fp.register(["/bin/sh", "-c", "exit 0"])
    proc = launch_mod.launch(["/bin/sh", "-c", "exit 0"], uid=61001, gid=61002, env={}, setpriv=SETPRIV)
    proc.wait()
    launch_mod.forget(proc)
    assert fp.call_count(wrapped) == 1
    proc = launch_mod.launch(["/bin/sh", "-c", "exit 0"], uid=None, gid=None, env={}, setpriv=SETPRIV)
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
    launch_mod.forget(launch_mod.launch(["/bin/true"], uid=61001, gid=61002, env={}, setpriv=SETPRIV))
    assert "user" not in seen and "group" not in seen and "extra_groups" not in seen
    assert seen["argv"][0] == SETPRIV and seen["start_new_session"] is True


def test_a_setpriv_without_ambient_caps_is_not_used(fp, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """util-linux before 2.32 has no --ambient-caps: the host offers no dropper then, and
    says why (the probe is ``setpriv --help``, run once, as the gateway)."""
    from ductile.privsep import dropper_host

    good = [(p, m, 0) for p, m, _ in GOOD_CHAIN]
    monkeypatch.setattr(dropper_host, "chain_facts", lambda path: good if path == SETPRIV else [])
    fp.register([SETPRIV, "--help"], stdout="Usage: setpriv [options] <program>\n --reuid --regid --clear-groups --inh-caps\n")
    dropper_host.forget()
    try:
        host = dropper_host.host_dropper()
        assert host.path is None and "too old: no --ambient-caps" in host.why_not
        assert fp.call_count([SETPRIV, "--help"]) == 1
        fp.register([SETPRIV, "--help"], stdout=" ".join(dropper.NEEDED_OPTIONS))
        dropper_host.forget()
        assert dropper_host.host_dropper() == HostDropper(SETPRIV, "")
    finally:
        dropper_host.forget()


def test_the_host_setpriv_lists_every_option_the_drop_uses() -> None:
    """The real binary on this machine (the wall tests exec it)."""
    from ductile.privsep import dropper_host

    dropper_host.forget()
    host = dropper_host.host_dropper()
    assert host.path is not None, host.why_not
    assert dropper.missing_options(dropper_host.help_text(host.path)) == []
