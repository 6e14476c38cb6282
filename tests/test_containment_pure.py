"""The containment decisions as tables (privsep/containment.py, env PATH filter, the
trampoline text), and the argv contract of the helpers that shell out (pytest-subprocess)."""

from __future__ import annotations

import stat
import subprocess

import pytest

from ductile.privsep.containment import (CgroupFacts, choose_mode, instance_name, parse_instance, plan_cgroup,
                                         plan_limits)
from ductile.privsep.env import can_traverse, plugin_path
from ductile.privsep.spawnspec import EXIT_LIMIT, trampoline_script

M = "/sys/fs/cgroup"
DIR = stat.S_IFDIR


def facts(**kw: object) -> CgroupFacts:
    base = dict(mount=M, own="/system.slice/ductile.service", configured=None, base_exists=True, base_writable=True,
                base_controllers=("cpu", "io", "memory", "pids"), base_subtree=(), kill_supported=True, euid=999)
    base.update(kw)
    return CgroupFacts(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("kw,usable,why", [
    (dict(mount=None), False, "no cgroup v2 hierarchy is mounted"),
    (dict(own=None), False, "in no cgroup v2"),
    (dict(base_exists=False), False, "does not exist"),
    (dict(base_writable=False), False, "not writable by uid 999 (not delegated"),
    (dict(kill_supported=False), False, "cgroup.kill"),
    (dict(configured="/elsewhere/x"), False, "is not under the cgroup v2 mount"),
    (dict(), True, ""),
])
def test_plan_cgroup_table(kw: dict, usable: bool, why: str) -> None:  # type: ignore[type-arg]
    plan = plan_cgroup(facts(**kw))
    assert plan.usable is usable and why in plan.why_not


def test_a_delegated_gateway_leaves_for_a_leaf_to_enable_controllers() -> None:
    plan = plan_cgroup(facts())
    assert plan.base == M + "/system.slice/ductile.service" and plan.move_self
    assert plan.enable == ("cpu", "memory", "pids")  # io is not wanted


def test_no_controllers_no_move() -> None:
    assert not plan_cgroup(facts(base_controllers=("hugetlb",))).move_self


def test_a_configured_root_elsewhere_is_used_without_moving() -> None:
    plan = plan_cgroup(facts(configured=M + "/ductile.jobs"))
    assert plan.base == M + "/ductile.jobs" and not plan.move_self and plan.enable == ("cpu", "memory", "pids")


def test_the_host_root_cgroup_is_never_reconfigured() -> None:
    plan = plan_cgroup(facts(own="/"))
    assert plan.usable and plan.base == M and plan.enable == () and not plan.move_self


@pytest.mark.parametrize("configured,usable,mode,refused", [
    ("sweep", True, "sweep", False), ("sweep", False, "sweep", False),
    ("auto", True, "cgroup", False), ("auto", False, "sweep", False),
    ("cgroup", True, "cgroup", False), ("cgroup", False, "sweep", True),
])
def test_choose_mode_truth_table(configured: str, usable: bool, mode: str, refused: bool) -> None:
    plan = plan_cgroup(facts() if usable else facts(base_writable=False))
    d = choose_mode(configured, plan)
    assert (d.mode, d.refused) == (mode, refused)
    if refused:
        assert "Delegate=yes" in d.fix and "not writable" in d.reason


def test_a_failed_setup_falls_back_or_refuses() -> None:
    assert choose_mode("auto", plan_cgroup(facts()), "EACCES").mode == "sweep"
    assert choose_mode("cgroup", plan_cgroup(facts()), "EACCES").refused


def test_limits_go_to_the_controller_when_there_is_one() -> None:
    p = plan_limits(512 << 20, 256, 50, ("cpu", "memory", "pids"), {"as": None, "nproc": 1000})
    assert dict(p.cgroup_files) == {"memory.max": str(512 << 20), "memory.oom.group": "1", "pids.max": "256",
                                    "cpu.max": "50000 100000"}
    assert p.rlimits == (("core", 0),)
    assert set(p.enforced) == {"memory", "pids", "cpu"} and "cgroup" in p.enforced["cpu"]


def test_limits_fall_back_to_rlimits_capped_by_the_gateways_own() -> None:
    p = plan_limits(512 << 20, 256, 50, (), {"as": 100 << 20, "nproc": 100})
    assert p.cgroup_files == ()
    assert dict(p.rlimits) == {"core": 0, "as": 100 << 20, "nproc": 100}
    assert p.enforced["cpu"].startswith("NOT ENFORCED") and "RLIMIT_NPROC=100" in p.enforced["pids"]


def test_no_limits_still_no_core_dumps() -> None:
    p = plan_limits(None, None, None, ("pids",), {})
    assert p.rlimits == (("core", 0),) and p.cgroup_files == () and p.enforced == {}


def test_instance_names_round_trip_and_ignore_others() -> None:
    assert parse_instance(instance_name(123, 4567)) == (123, 4567)
    for other in ("ductile-gateway", "ductile-x-1", "job-1", "ductile-12"):
        assert parse_instance(other) is None


def test_trampoline_sets_rlimits_in_both_shell_dialects_and_fails_closed() -> None:
    script = trampoline_script((("core", 0), ("nproc", 64), ("as", 64 << 20)))
    assert "ulimit -c 0" in script and "ulimit -v 65536" in script
    assert "ulimit -u 64 2>/dev/null || ulimit -p 64" in script
    assert script.count(f"exit {EXIT_LIMIT}") == 3
    assert script.index('read -r go') < script.index("ulimit") < script.index('cd -- "$1"') < script.index('exec "$@"')


def test_trampoline_applies_limits_for_real(tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = trampoline_script((("core", 0), ("nproc", 77)))
    out = subprocess.run(["/bin/sh", "-c", script, "ductile-spawn", str(tmp_path), "/bin/sh", "-c",
                          "grep -E 'Max (processes|core)' /proc/self/limits; echo $TMPDIR; ls -ld tmp"],
                         input=b"go\n", capture_output=True, check=True).stdout.decode()
    assert "Max processes             77" in out and "Max core file size        0" in out
    assert (tmp_path / "tmp").is_dir() and oct((tmp_path / "tmp").stat().st_mode & 0o777) == "0o700"


def test_the_trampoline_runs_nothing_without_the_go() -> None:
    proc = subprocess.run(["/bin/sh", "-c", trampoline_script((("core", 0),)), "ductile-spawn", "/", "/bin/echo", "RAN"],
                          input=b"", capture_output=True)
    assert proc.returncode == 121 and b"RAN" not in proc.stdout


ROOT = (DIR | 0o755, 0, 0)


@pytest.mark.parametrize("chain,ok", [
    ([ROOT, (DIR | 0o755, 0, 0)], True),
    ([ROOT, (DIR | 0o700, 0, 0)], False),                   # /root
    ([ROOT, (DIR | 0o700, 5000, 5000)], True),              # owned by the account
    ([ROOT, (DIR | 0o710, 0, 5000)], True),                 # its group may search
    ([ROOT, (DIR | 0o701, 0, 5000)], False),                # group bits apply to the group, not other
    ([ROOT, (stat.S_IFREG | 0o755, 0, 0)], False),
    ([], False),
])
def test_can_traverse(chain: list, ok: bool) -> None:  # type: ignore[type-arg]
    assert can_traverse(5000, 5000, chain) is ok


def test_plugin_path_keeps_only_what_the_account_can_search() -> None:
    chains = {"/usr/bin": [ROOT, ROOT, ROOT], "/root/.pyenv/bin": [ROOT, (DIR | 0o700, 0, 0), ROOT, ROOT]}
    assert plugin_path(["/usr/bin", "/root/.pyenv/bin", "/missing"], 5000, 5000, chains) == "/usr/bin"
    assert plugin_path(["/usr/bin", "/root/.pyenv/bin"], None, None, chains) == "/usr/bin:/root/.pyenv/bin"


# ---- argv contract of the helpers (pytest-subprocess) ---------------------------------------

def test_the_sweep_runs_kill_minus_one_as_the_account(fp, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from ductile.runtime import jobcontain

    monkeypatch.setattr(jobcontain, "account_processes", lambda uid: [4242])
    fp.register(["/bin/kill", "-KILL", "--", "-1"])
    assert jobcontain.sweep_account(61001, 61001) == 1
    assert fp.call_count(["/bin/kill", "-KILL", "--", "-1"]) == 1


def test_no_leftovers_no_helper(fp, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from ductile.runtime import jobcontain

    monkeypatch.setattr(jobcontain, "account_processes", lambda uid: [])
    assert jobcontain.sweep_account(61001, 61001) == 0
    assert fp.calls == type(fp.calls)()  # nothing was started


def test_the_group_signal_falls_back_to_the_helper(fp, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import os

    from ductile.config.model import ServiceConfig
    from ductile.privsep.accounts import ResolvedAccount
    from ductile.privsep.spawnspec import build_spawn_spec
    from ductile.runtime import spawn

    def denied(pgid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "killpg", denied)
    spec = build_spawn_spec(ResolvedAccount("a", 61001, 61001, "/d", "granted"), "/e", ServiceConfig(), {},
                            timeout=1, unconfined_workdir="/u")
    fp.register(["/bin/kill", "-TERM", "--", "-777"])
    spawn.signal_group(spec, 777, 15)
    assert fp.call_count(["/bin/kill", "-TERM", "--", "-777"]) == 1


def test_the_account_lock_coordinates_sweeps_across_open_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two jobs of one account (any processes): neither may sweep while the other runs; a
    job that could not sweep leaves the mark for whoever can."""
    from ductile.runtime.jobcontain import AccountLock

    path = str(tmp_path / "uid-1.lock")
    a, b = AccountLock(path), AccountLock(path)
    a.hold_shared()
    b.hold_shared()
    assert not a.try_exclusive()  # b runs
    a.mark_dirty()
    a.close()
    assert b.try_exclusive() and b.is_dirty()
    b.clear()
    assert not b.is_dirty()
    b.close()


def test_two_trampolines_racing_to_make_tmp_both_start(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Concurrent jobs of one account both find (or make) the private TMPDIR."""
    script = trampoline_script((("core", 0),))
    procs = [subprocess.Popen(["/bin/sh", "-c", script, "ductile-spawn", str(tmp_path), "/bin/true"],
                              stdin=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(20)]
    for p in procs:
        p.stdin.write(b"go\n")  # type: ignore[union-attr]
    for p in procs:
        p.stdin.close()  # type: ignore[union-attr]
    codes = [p.wait(30) for p in procs]
    assert codes == [0] * 20, [p.stderr.read() for p in procs if p.returncode]  # type: ignore[union-attr]
