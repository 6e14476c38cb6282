"""The plugin author's kit (#12): ``plugin new`` scaffolds a plugin that honours the confined
runtime contract, and ``plugin new`` -> ``plugin test`` -> ``plugin lock`` -> ``plugin run`` works
as a new author would do it, as a root gateway and as a cap-only one."""

from __future__ import annotations

import json
import os
import py_compile
import stat
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_ductile
from wallworld import World, destroy, make_world, require_root

from ductile.plugins.manifest import parse_manifest
from ductile.plugins.scaffold import check_name, scaffold, unreachable_ancestor, write_scaffold


# -- the scaffold, as data ----------------------------------------------------------------

@pytest.mark.parametrize("lang", ["python", "sh"])
def test_the_scaffold_is_a_valid_plugin_with_a_reachable_interpreter_and_safe_modes(tmp_path: Path, lang: str) -> None:
    target = Path(write_scaffold(str(tmp_path / "_hello"), scaffold("_hello", lang)))  # type: ignore[arg-type]
    manifest, findings = parse_manifest(str(target / "manifest.yaml"))
    assert findings == [] and manifest.name == "_hello" and manifest.manifest_spec == "ductile.plugin"
    entry = target / manifest.entrypoint
    assert entry.read_text().splitlines()[0] == ("#!/usr/bin/python3" if lang == "python" else "#!/bin/sh")
    for path in [target, *target.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert not mode & 0o022, f"{path} is group/world writable ({oct(mode)})"
        assert mode & 0o004, f"{path} is not readable by an account"
    assert stat.S_IMODE(entry.stat().st_mode) == 0o755
    assert sorted(p.name for p in (target / "fixtures").iterdir()) == [f"{c}.json" for c in sorted(manifest.command_names)]
    if lang == "python":
        py_compile.compile(str(entry), doraise=True)
    assert "os.environ" not in entry.read_text()  # secrets come from the request, never the environment


@pytest.mark.parametrize(("name", "needle"), [
    ("bad name", "not a valid plugin name"), ("-x", "not a valid plugin name"),
    ("webhook_relay", "namespace webhook*"), ("plugin", "namespace plugin.*"), ("Job", "namespace job.*")])
def test_a_name_that_cannot_work_is_refused_before_anything_is_written(name: str, needle: str) -> None:
    from ductile.errors import UsageError

    with pytest.raises(UsageError) as caught:
        check_name(name)
    assert needle in caught.value.one_line()


def test_plugin_new_refuses_an_existing_path_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    proc = run_ductile("plugin", "new", "taken", "--dir", str(tmp_path))
    assert_one_line_error(proc, "already exists", code=2)
    assert list((tmp_path / "taken").iterdir()) == []


def test_plugin_new_warns_when_accounts_could_not_reach_the_directory(tmp_path: Path) -> None:
    private = tmp_path / "home"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700)
    proc = run_ductile("plugin", "new", "mine", "--dir", str(private))
    assert proc.returncode == 0, proc.stderr
    assert f"warning: {private} is not traversable" in proc.stderr
    assert unreachable_ancestor(str(private / "mine")) == str(private)
    assert "ductile plugin test mine" in proc.stdout


# -- new -> test -> lock -> run, confined -----------------------------------------------------

@pytest.fixture(scope="module", params=["root", "cap-only"])
def world(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    require_root()
    w = make_world(0 if request.param == "root" else None, ["default", "untrusted"], {})
    yield w
    destroy(w)


def configure(world: World, **plugins: str) -> None:
    world.plugins.update(plugins)
    world.write_config()


@pytest.mark.privileged
@pytest.mark.parametrize("lang", ["python", "sh"])
def test_new_then_test_then_lock_then_run_as_a_new_author_would(world: World, lang: str) -> None:
    name = f"hello_{lang}"
    made = run_ductile("plugin", "new", name, "--lang", lang, "--dir", str(world.base / "plugins"))
    assert made.returncode == 0, made.stderr
    assert "warning" not in made.stderr
    configure(world, **{name: "{run_as: default}"})

    tested = world.run("plugin", "test", name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert tested.stdout.count("PASS") == 3 and "3/3 passed" in tested.stdout
    report = json.loads(world.run("plugin", "test", name, "--json").stdout)
    handle = next(r for r in report["runs"] if r["command"] == "handle")
    assert handle["passed"]
    # confined either way: as its grant, or downgraded while other plugins are locked and it is not yet
    if handle["run"]["lock"]["downgraded_from"]:
        assert handle["run"]["account"]["name"] == "untrusted" and f"ductile plugin lock {name}" in tested.stdout
    else:
        assert handle["run"]["account"]["name"] == "default" and f"uid {world.accounts['default']}" in tested.stdout

    locked = world.run("plugin", "lock", name)
    assert locked.returncode == 0, locked.stderr
    ran = world.run("plugin", "run", name, "--command", "handle", "--payload", '{"message": "hi"}', "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    out = json.loads(ran.stdout)
    assert out["outcome"]["status"] == "succeeded" and out["lock"]["state"] == "locked", out["lock"]
    assert out["lock"]["downgraded_from"] is None
    assert out["account"]["uid"] == world.accounts["default"]
    assert [e["type"] for e in out["events"]] == [f"{name}.done"]
    written = world.state_dir("default") / ("last-message.txt" if lang == "python" else "last-handled.txt")
    assert written.exists() and written.stat().st_uid == world.accounts["default"]


@pytest.mark.privileged
def test_a_failing_fixture_says_what_is_wrong_and_exits_1(world: World) -> None:
    name = "checked"
    assert run_ductile("plugin", "new", name, "--dir", str(world.base / "plugins")).returncode == 0
    fixture = world.base / "plugins" / name / "fixtures" / "handle.json"
    fixture.write_text(json.dumps({"payload": {"message": "hi"},
                                   "expect": {"result": {"received": "bye"}, "events": ["checked.other"]}}))
    (world.base / "plugins" / name / "fixtures" / "poll.json").write_text(json.dumps({"payload": {}}))
    os.chmod(fixture, 0o644)
    configure(world, **{name: "{run_as: default}"})
    proc = world.run("plugin", "test", name)
    assert proc.returncode == 1, proc.stdout
    assert "FAIL checked handle" in proc.stdout and "2/3 passed" in proc.stdout
    assert 'result.received should be "bye", got "hi"' in proc.stdout
    assert "events should be ['checked.other'], got ['checked.done']" in proc.stdout
    refused = world.run("plugin", "test", name, "--command", "handle", "--payload", "{}")
    assert refused.returncode == 1 and "status should be ok, got error: " in refused.stdout
    assert "event.payload must include message" in refused.stdout


@pytest.mark.privileged
def test_plugin_test_explains_an_unconfigured_plugin_and_a_plugin_without_fixtures(world: World) -> None:
    assert run_ductile("plugin", "new", "loose", "--dir", str(world.base / "plugins")).returncode == 0
    unconfigured = world.run("plugin", "test", "loose")
    assert_one_line_error(unconfigured, "not configured", "plugins: {loose: {run_as: default}}")
    configure(world, loose="{run_as: default}")
    for f in (world.base / "plugins" / "loose" / "fixtures").iterdir():
        f.unlink()
    bare = world.run("plugin", "test", "loose")
    assert_one_line_error(bare, "has no fixtures", "--command", code=2)
    one = world.run("plugin", "test", "loose", "-C", "health")
    assert one.returncode == 0 and "PASS loose health ({})" in one.stdout
