"""What a plugin prints decides its job: garbage, truncated, non-UTF-8, oversized, empty,
exit codes and timeouts each fail with a one-line reason (through the real `plugin run`)."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from conftest import run_ductile

PLUGINS = {
    "garbage": "import sys; sys.stdin.read(); print('this is not json')",
    "truncated": "import sys; sys.stdin.read(); sys.stdout.write('{\"status\": \"ok\", \"result\": [1, 2')",
    "notutf8": "import sys; sys.stdin.read(); sys.stdout.buffer.write(b'{\"status\": \"ok\", \"result\": \"\\xff\\xfe\"}')",
    "huge": "import sys; sys.stdin.read(); sys.stdout.write('{\"status\": \"ok\", \"result\": \"' + 'x' * (10 * 1024 * 1024) + '\"}')",
    "empty": "import sys; sys.stdin.read()",
    "array": "import sys; sys.stdin.read(); print('[1, 2, 3]')",
    "exit78": "import sys, json; sys.stdin.read(); json.dump({'status': 'error', 'error': 'bad config'}, sys.stdout); sys.exit(78)",
    "noretry": "import sys, json; sys.stdin.read(); json.dump({'status': 'error', 'error': 'gone', 'retry': False}, sys.stdout)",
    "crash": "import sys; sys.stdin.read(); sys.stderr.write('Traceback: boom\\n'); sys.exit(3)",
    "chatty": "import sys, json; sys.stdin.read(); sys.stderr.write('e' * 300000); json.dump({'status': 'ok', 'result': 'fine', 'extra_key': 1}, sys.stdout)",
    "slow": "import sys, time; sys.stdin.read(); time.sleep(60)",
    "bigin": "import sys, json; data = json.load(sys.stdin); json.dump({'status': 'ok', 'result': len(data['payload']['blob'])}, sys.stdout)",
}

EXPECT = {
    "garbage": ("failed", False, "not JSON"),
    "truncated": ("failed", False, ""),
    "notutf8": ("failed", False, "UTF-8"),
    "huge": ("failed", False, "stdout limit of 4194304 bytes"),
    "empty": ("failed", False, "empty"),
    "array": ("failed", False, "object"),
    "exit78": ("failed", True, "bad config"),
    "noretry": ("failed", True, "gone"),
    "crash": ("failed", False, "exited 3"),
    "slow": ("timed_out", False, "timed out"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("outputs")
    (base / "etc").mkdir()
    for name, body in PLUGINS.items():
        d = base / "plugins" / name
        d.mkdir(parents=True)
        (d / "manifest.yaml").write_text(f"name: {name}\nprotocol: 2\nentrypoint: run.py\ncommands: [{{name: poll, type: read}}]\n")
        (d / "run.py").write_text("#!/usr/bin/python3\n" + body + "\n")
        os.chmod(d / "run.py", 0o755)
    plugins = "\n".join(f"  {n}: {{timeouts: {{poll: 2s}}}}" for n in PLUGINS)
    (base / "etc" / "config.yaml").write_text(textwrap.dedent(f"""\
        service: {{unconfined: true, max_plugin_output: 4MiB, kill_grace: 1s}}
        state: {{path: ../state/ductile.db}}
        plugin_roots: [../plugins]
        api: {{enabled: false}}
        """) + f"plugins:\n{plugins}\n")
    return base


def run(world: Path, plugin: str, payload: str = "{}"):  # type: ignore[no-untyped-def]
    proc = run_ductile("plugin", "run", plugin, "--json", "--payload", payload, "--config", str(world / "etc"))
    return proc, json.loads(proc.stdout)


@pytest.mark.parametrize("plugin", sorted(EXPECT))
def test_bad_output_fails_the_job_with_a_reason(world: Path, plugin: str) -> None:
    proc, out = run(world, plugin)
    status, terminal, needle = EXPECT[plugin]
    assert proc.returncode == 1
    assert out["outcome"]["status"] == status
    assert out["outcome"]["terminal"] is terminal
    reason = out["outcome"]["error"]["message"]
    assert needle in reason and "\n" not in reason
    assert "Traceback (most recent call last)" not in proc.stderr
    assert f"job {status}" in proc.stderr


def test_stderr_volume_never_fails_a_good_answer(world: Path) -> None:
    proc, out = run(world, "chatty")
    assert proc.returncode == 0 and out["outcome"]["status"] == "succeeded" and out["outcome"]["result"] == "fine"


def test_large_request_is_written_without_deadlock(world: Path) -> None:
    blob = "y" * (3 * 1024 * 1024)
    (world / "big.json").write_text(json.dumps({"blob": blob}))
    proc, out = run(world, "bigin", "@" + str(world / "big.json"))
    assert out["outcome"]["result"] == len(blob)


def test_unknown_plugin_and_command_are_refused_before_spawn(world: Path) -> None:
    proc = run_ductile("plugin", "run", "nope", "--config", str(world / "etc"))
    assert proc.returncode == 1 and "not configured" in proc.stderr
    proc = run_ductile("plugin", "run", "garbage", "--command", "frob", "--config", str(world / "etc"))
    assert proc.returncode == 1 and "has no command 'frob'" in proc.stderr


def test_bad_payload_is_a_usage_error(world: Path) -> None:
    proc = run_ductile("plugin", "run", "garbage", "--payload", "{nope", "--config", str(world / "etc"))
    assert proc.returncode == 2 and "--payload is not JSON" in proc.stderr
    proc = run_ductile("plugin", "run", "garbage", "--payload", "@/nonexistent.json", "--config", str(world / "etc"))
    assert proc.returncode == 2 and "/nonexistent.json" in proc.stderr


def test_payload_from_stdin(world: Path) -> None:
    proc = run_ductile("plugin", "run", "bigin", "--json", "--payload", "-", "--config", str(world / "etc"),
                       input=json.dumps({"blob": "abc"}))
    assert json.loads(proc.stdout)["outcome"]["result"] == 3
