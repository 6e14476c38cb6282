"""Shared fixtures. Privileged tests are marked ``privileged``; under CI (CI=true) a
privileged test that skips is turned into a failure, because a skipped wall test proves
nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "privileged: needs root or capabilities; under CI a skip is a failure")
    config.addinivalue_line("markers", "needs_tool(name): needs a host tool; under CI a skip is a failure")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No cgroup survives the suite: a gateway killed -9 by a test leaves its job cgroups
    to the next gateway on the same base; remove those whose owner is gone now."""
    if os.geteuid() == 0:
        from ductile.privsep.cgroup import reap_stale
        from wallworld import CGROUP2

        reap_stale(str(CGROUP2))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and (item.get_closest_marker("privileged") or item.get_closest_marker("needs_tool")):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"privileged/tool test skipped under CI (a skip is not a pass): {reason}"


def run_ductile(*args: str, env: dict[str, str] | None = None, input: str | None = None,
                timeout: float = 60, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a fresh interpreter (what an operator gets)."""
    full_env = dict(os.environ)
    full_env.pop("DUCTILE_DEBUG", None)
    full_env.setdefault("NO_COLOR", "1")
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", "ductile", *args], capture_output=True, text=True,
                          env=full_env, input=input, timeout=timeout, cwd=cwd)


@pytest.fixture
def ductile_cli():
    return run_ductile


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str, code: int = 1) -> str:
    """The refusal contract: exit code, exactly one stderr line, names what it must, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def run_in_pty(argv: list[str], env: dict[str, str] | None = None,
               answers: list[tuple[bytes, bytes]] | None = None, timeout: float = 60) -> tuple[int, bytes]:
    """Run ``argv`` on a pseudo-terminal (what an operator at a shell gets), answering each
    prompt in ``answers`` [(text to wait for, reply)] in order. Returns (exit code, output)."""
    import pty
    import select

    pending = list(answers or [])
    pid, fd = pty.fork()
    if pid == 0:  # child
        os.environ.update(env or {})
        os.execv(argv[0], argv)
    out = b""
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:  # a hung child is a failure, not a timing assertion
            os.kill(pid, 9)
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
        if pending and pending[0][0] in out:
            os.write(fd, pending.pop(0)[1])
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out
