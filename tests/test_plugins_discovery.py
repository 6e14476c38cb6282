"""Discovery on a real filesystem: the walk, the trust edge, duplicates and broken plugins."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import REPO

from ductile.plugins.discovery import MAX_WALK_DEPTH, Discovery, discover_plugins
from ductile.privsep.trust import Owners

UPSTREAM = REPO / "tests" / "fixtures" / "upstream" / "birdsong_digest"
ACCOUNT = 61001


def make_root(tmp_path: Path, name: str = "plugins") -> Path:
    root = tmp_path / name
    root.mkdir(mode=0o755)
    root.chmod(0o755)  # independent of the umask the suite runs under
    return root


def make_plugin(root: Path, rel: str, *, name: str | None = None, entrypoint: str = "run.py",
                mode: int = 0o755, manifest: str | None = None, script: bool = True) -> Path:
    plugin = root / rel
    plugin.mkdir(parents=True)
    for d in [plugin, *plugin.relative_to(root).parents]:
        (root / d).chmod(0o755)
    text = manifest if manifest is not None else (
        f"name: {name or plugin.name}\nprotocol: 2\nentrypoint: {entrypoint}\ncommands: [{{name: poll, type: read}}]\n")
    (plugin / "manifest.yaml").write_text(text)
    (plugin / "manifest.yaml").chmod(0o644)
    if script and "/" not in entrypoint:
        (plugin / entrypoint).write_text("#!/bin/sh\necho '{\"status\":\"ok\"}'\n")
        (plugin / entrypoint).chmod(mode)
    return plugin


def rules(discovery: Discovery) -> dict[str | None, list[str]]:
    return {s.name: [f.field for f in s.findings] for s in discovery.skipped}


def test_trusted_plugins_are_discovered_with_resolved_paths(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    make_plugin(root, "echo")
    make_plugin(root, "team/counter")
    found = discover_plugins([str(root)])
    assert sorted(found.plugins) == ["counter", "echo"] and found.findings == [] and found.skipped == ()
    echo = found.plugins["echo"]
    assert echo.directory == os.path.realpath(root / "echo")
    assert echo.entrypoint == os.path.realpath(root / "echo" / "run.py") and os.path.isabs(echo.entrypoint)
    assert echo.manifest_path == os.path.realpath(root / "echo" / "manifest.yaml")
    assert echo.manifest.command_names == ("poll",)


def test_upstream_plugin_directory_loads_unchanged(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    shutil.copytree(UPSTREAM, root / "birdsong_digest")
    for path in [root / "birdsong_digest", root / "birdsong_digest" / "run.py"]:
        path.chmod(0o755)
    (root / "birdsong_digest" / "manifest.yaml").chmod(0o644)
    found = discover_plugins([str(root)])
    assert list(found.plugins) == ["birdsong_digest"], found.findings
    assert found.plugins["birdsong_digest"].manifest.manifest_spec == "ductile.plugin"


def test_group_writable_plugin_dir_is_skipped_and_others_survive(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    make_plugin(root, "good")
    bad = make_plugin(root, "loose")
    bad.chmod(0o775)
    found = discover_plugins([str(root)])
    assert list(found.plugins) == ["good"]
    assert rules(found) == {"loose": ["trust.not-group-or-world-writable"]}
    [f] = found.findings
    assert f.severity == "error" and str(bad) in f.message and f.fix == f"chmod go-w {bad}"
    assert f.where == str(bad / "manifest.yaml")


def test_world_writable_entrypoint_is_skipped(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    make_plugin(root, "loose", mode=0o757)
    assert rules(discover_plugins([str(root)])) == {"loose": ["trust.not-group-or-world-writable"]}


def test_symlinked_entrypoint_escaping_the_plugin_dir_is_skipped(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    outside = tmp_path / "outside.sh"
    outside.write_text("#!/bin/sh\n")
    outside.chmod(0o755)
    plugin = make_plugin(root, "escape", entrypoint="link.sh", script=False)
    (plugin / "link.sh").symlink_to(outside)
    found = discover_plugins([str(root)])
    assert found.plugins == {} and rules(found) == {"escape": ["trust.inside-plugin-dir"]}
    assert str(outside) in found.findings[0].message


def test_symlinked_directory_on_the_entrypoint_path_cannot_escape(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    other = make_plugin(root, "other")
    plugin = make_plugin(root, "sneaky", entrypoint="lib/run.py")
    (plugin / "lib").symlink_to(other)
    found = discover_plugins([str(root)])
    assert "sneaky" not in found.plugins and rules(found) == {"sneaky": ["trust.inside-plugin-dir"]}


def test_symlink_inside_the_plugin_dir_is_fine_and_resolved(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    plugin = make_plugin(root, "linked", entrypoint="run", script=False)
    (plugin / "real.sh").write_text("#!/bin/sh\n")
    (plugin / "real.sh").chmod(0o755)
    (plugin / "run").symlink_to("real.sh")
    found = discover_plugins([str(root)])
    assert found.plugins["linked"].entrypoint == os.path.realpath(plugin / "real.sh")


def test_dotdot_entrypoint_is_refused_at_the_manifest(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    make_plugin(root, "shared")
    make_plugin(root, "climber", entrypoint="../shared/run.py")
    found = discover_plugins([str(root)])
    assert list(found.plugins) == ["shared"]
    assert rules(found) == {None: ["manifest"]}
    assert "'..' component" in found.findings[0].message and found.findings[0].where.endswith("manifest.yaml:3")


def test_non_executable_entrypoint_is_skipped(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    make_plugin(root, "flat", mode=0o644)
    found = discover_plugins([str(root)])
    assert rules(found) == {"flat": ["trust.executable"]}
    assert found.findings[0].fix == f"chmod 0755 {root / 'flat' / 'run.py'}"


def test_missing_entrypoint_is_skipped(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    make_plugin(root, "ghost", entrypoint="bin/run")
    assert rules(discover_plugins([str(root)])) == {"ghost": ["trust.entrypoint-exists"]}


def test_missing_root_is_an_error_and_other_roots_still_load(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    make_plugin(root, "echo")
    missing = str(tmp_path / "nowhere")
    found = discover_plugins([missing, str(root)])
    assert list(found.plugins) == ["echo"] and found.missing_roots == (missing,)
    [f] = found.findings
    assert (f.severity, f.field) == ("error", "plugin_roots[0]") and missing in f.message and f.fix


def test_root_that_is_a_file_or_writable_is_refused_whole(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("")
    loose = make_root(tmp_path, "loose")
    make_plugin(loose, "echo")
    loose.chmod(0o777)
    found = discover_plugins([str(afile), str(loose)])
    assert found.plugins == {}
    assert [f.field for f in found.findings] == ["plugin_roots[0]", "plugin_roots[1]"]
    assert "not a directory" in found.findings[0].message and "world-writable" in found.findings[1].message


def test_broken_manifest_skips_only_that_plugin(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    make_plugin(root, "good")
    make_plugin(root, "broken", manifest="name: broken\nprotocol: 2\ncommands: [{name: poll, type: nope}]\n")
    found = discover_plugins([str(root)])
    assert list(found.plugins) == ["good"]
    [f] = found.findings
    assert f.severity == "error" and f.field == "manifest" and str(root / "broken") in f.message
    assert "manifest.yaml:" in f.where


def test_manifest_that_is_a_fifo_is_skipped_without_blocking(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    plugin = root / "pipe"
    plugin.mkdir(mode=0o755)
    os.mkfifo(plugin / "manifest.yaml")
    found = discover_plugins([str(root)])
    assert found.plugins == {} and [f.field for f in found.findings] == ["trust.regular-file"]


def test_duplicate_names_first_root_wins_then_path(tmp_path: Path) -> None:
    first, second = make_root(tmp_path, "first"), make_root(tmp_path, "second")
    make_plugin(second, "aaa", name="echo")
    make_plugin(first, "zzz", name="echo")
    make_plugin(first, "yyy", name="echo")
    found = discover_plugins([str(first), str(second)])
    assert found.plugins["echo"].directory == str(first / "yyy")
    dups = [f for f in found.findings if f.field == "duplicate"]
    assert [f.where for f in dups] == [str(first / "zzz" / "manifest.yaml"), str(second / "aaa" / "manifest.yaml")]
    assert all(f.severity == "warning" and str(first / "yyy") in f.message for f in dups)


def test_untrusted_copy_does_not_shadow_a_trusted_one(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    make_plugin(root, "aaa", name="echo", mode=0o777)
    make_plugin(root, "bbb", name="echo")
    found = discover_plugins([str(root)])
    assert found.plugins["echo"].directory == str(root / "bbb")


def test_same_root_twice_or_nested_finds_each_plugin_once(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    make_plugin(root, "team/echo")
    found = discover_plugins([str(root), str(root / "team"), str(root)])
    assert list(found.plugins) == ["echo"] and found.findings == []


def test_walk_skips_symlinked_dirs_dot_dirs_and_tool_dirs(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    elsewhere = make_root(tmp_path, "elsewhere")
    make_plugin(elsewhere, "linked")
    (root / "link").symlink_to(elsewhere / "linked")
    for hidden in [".git/hook", "__pycache__/x", "node_modules/x", ".venv/x", "pkg/node_modules/y"]:
        make_plugin(root, hidden, name=hidden.replace("/", "_").strip("._"))
    make_plugin(root, "visible")
    found = discover_plugins([str(root)])
    assert list(found.plugins) == ["visible"] and found.findings == []


def test_walk_depth_is_bounded_and_says_so(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    shallow = "/".join(["d"] * MAX_WALK_DEPTH)
    deep = "/".join(["e"] * (MAX_WALK_DEPTH + 1))
    make_plugin(root, shallow, name="shallow")
    make_plugin(root, deep, name="deep")
    found = discover_plugins([str(root)])
    assert list(found.plugins) == ["shallow"]
    [f] = found.findings
    assert f.severity == "warning" and "levels deep" in f.message


@pytest.mark.privileged
@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root; the rule is table-tested too")
def test_plugin_owned_by_an_account_is_skipped(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    plugin = make_plugin(root, "owned")
    os.chown(plugin / "run.py", ACCOUNT, ACCOUNT)
    assert list(discover_plugins([str(root)]).plugins) == ["owned"]  # nobody is forbidden yet
    found = discover_plugins([str(root)], owners=Owners.of({ACCOUNT}, os.geteuid()))
    assert rules(found) == {"owned": ["trust.not-owned-by-account"]}
