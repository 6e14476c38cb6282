"""The executor's plumbing without real processes: what it emits and returns when the
spawn edge refuses (the real-process paths are in test_privsep_wall.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from servehelp import plugin

from ductile.config import load_config
from ductile.errors import AccountDropFailed
from ductile.privsep.gate import evaluate_boot_gate
from ductile.runtime import executor as executor_mod
from ductile.runtime.boot import Assessment, Runtime, discover
from ductile.runtime.executor import Executor, Job


@pytest.fixture
def runtime(tmp_path: Path) -> Runtime:
    (tmp_path / "etc").mkdir()
    (tmp_path / "plugins").mkdir()
    plugin(tmp_path / "plugins", "echo", "#!/usr/bin/python3\n", commands="[{name: poll, type: read}]")
    (tmp_path / "etc" / "config.yaml").write_text(textwrap.dedent("""\
        plugin_roots: [../plugins]
        api: {enabled: false}
        accounts:
          default: {uid: 61001, gid: 61001, state_dir: /var/lib/x/default}
        plugins: {echo: {}}
        """))
    loaded = load_config(str(tmp_path / "etc"), gateway_uid=984)
    verdict = evaluate_boot_gate(True, 1, False)
    return Runtime(loaded, discover(loaded), Assessment(verdict, True, 984, None), gateway_env={"PATH": "/usr/bin"})


def test_refused_drop_emits_plugin_drop_failed_and_is_terminal(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(spec, request, on_start=None, cancel=None):  # type: ignore[no-untyped-def]
        assert spec.uid == 61001 and spec.groups == ()
        raise AccountDropFailed("the kernel refused the drop to uid 61001 gid 61001: Operation not permitted",
                                where="accounts.default")

    monkeypatch.setattr(executor_mod, "spawn", refuse)
    emitted: list[tuple[str, dict]] = []  # type: ignore[type-arg]
    result = Executor(runtime, emit=lambda t, p: emitted.append((t, p))).run(Job("echo", "poll"))
    assert result.outcome.status == "failed" and result.outcome.terminal
    assert result.outcome.error is not None and result.outcome.error.kind == "drop_failed"
    [(kind, payload)] = emitted
    assert kind == "plugin.drop_failed"
    assert (payload["plugin"], payload["account"], payload["uid"], payload["gid"]) == ("echo", "default", 61001, 61001)
    assert payload["job_id"] == result.job.job_id


def test_a_plugin_must_be_configured_enabled_and_have_the_command(runtime: Runtime) -> None:
    ex = Executor(runtime)
    for job, needle in [(Job("ghost", "poll"), "not configured"), (Job("echo", "frob"), "has no command 'frob'")]:
        result = ex.run(job)
        assert result.outcome.terminal and needle in result.outcome.error.message  # type: ignore[union-attr]
        assert result.pid is None
