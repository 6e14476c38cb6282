"""Manifests: what loads, what is refused (one line: file:line, field, fix), what only warns."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import EXAMPLES, REPO

from ductile.errors import PluginError
from ductile.plugins.manifest import CommandSpec, Manifest, parse_manifest

UPSTREAM = REPO / "tests" / "fixtures" / "upstream" / "birdsong_digest" / "manifest.yaml"

MINIMAL = "name: demo\nprotocol: 2\nentrypoint: run.py\ncommands:\n  - {name: poll, type: read}\n"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "manifest.yaml"
    path.write_text(text)
    return str(path)


def test_minimal_manifest_loads_with_defaults(tmp_path: Path) -> None:
    manifest, findings = parse_manifest(write(tmp_path, MINIMAL))
    assert findings == []
    assert manifest == Manifest(name="demo", protocol=2, entrypoint="run.py",
                                commands=(CommandSpec(name="poll", type="read"),))
    assert manifest.concurrency_safe is True and manifest.config_keys == ()


@pytest.mark.parametrize("name", ["echo", "counter", "notify"])
def test_example_manifests_load_cleanly(name: str) -> None:
    manifest, findings = parse_manifest(str(EXAMPLES / "plugins" / name / "manifest.yaml"))
    assert manifest.name == name and findings == []


def test_plain_config_keys_list_declares_optional_keys() -> None:
    manifest, _ = parse_manifest(str(EXAMPLES / "plugins" / "echo" / "manifest.yaml"))
    assert manifest.config_keys_required == () and manifest.config_keys_optional == ("message",)


def test_upstream_manifest_loads_unchanged() -> None:
    manifest, findings = parse_manifest(str(UPSTREAM))
    assert findings == [], findings
    assert manifest.name == "birdsong_digest"
    assert (manifest.manifest_spec, manifest.manifest_version, manifest.version) == ("ductile.plugin", 1, "0.3.0")
    assert manifest.concurrency_safe is False
    assert manifest.command_names == ("poll", "handle", "health")
    assert [c.type for c in manifest.commands] == ["write", "write", "read"]
    poll = manifest.command("poll")
    assert poll is not None
    assert poll.idempotent is False and poll.retry_safe is True
    assert poll.description.startswith("Read today's detections")
    assert poll.input_schema == {"since": "string", "limit": "integer"}
    assert poll.output_schema["required"] == ["species"]
    assert poll.values["emit"][0]["event"] == "birdsong.digest"
    assert manifest.config_keys_required == ("db_path",)
    assert manifest.config_keys_optional == ("timezone", "min_confidence")
    assert [(f.command, f.fact_type, f.mirrors) for f in manifest.fact_outputs] == [
        ("poll", "birdsong_digest.snapshot", True)]
    assert manifest.state_mode("poll") == "replace" and manifest.state_mode("handle") == "merge"
    assert manifest.stopwatch == {"max_subs": 16}


BAD = [
    # (manifest text, needles in the one line: field, line, rule words)
    ("protocol: 2\nentrypoint: run.py\ncommands: [{name: poll, type: read}]\n", ["name is required", ":1"]),
    ("name: 'bad name'\nprotocol: 2\nentrypoint: run.py\ncommands: [{name: poll, type: read}]\n",
     ["name 'bad name' is not a valid plugin name", ":1"]),
    ("name: demo\nentrypoint: run.py\ncommands: [{name: poll, type: read}]\n", ["protocol is required", "protocol: 2"]),
    ("name: demo\nprotocol: 1\nentrypoint: run.py\ncommands: [{name: poll, type: read}]\n", ["protocol must be 2", ":2"]),
    ("name: demo\nprotocol: '2'\nentrypoint: run.py\ncommands: [{name: poll, type: read}]\n", ["protocol must be 2"]),
    ("name: demo\nprotocol: true\nentrypoint: run.py\ncommands: [{name: poll, type: read}]\n", ["protocol must be 2"]),
    ("name: demo\nprotocol: 2\ncommands: [{name: poll, type: read}]\n", ["entrypoint is required"]),
    ("name: demo\nprotocol: 2\nentrypoint: /bin/sh\ncommands: [{name: poll, type: read}]\n",
     ["entrypoint '/bin/sh' is absolute", ":3", "relative"]),
    ("name: demo\nprotocol: 2\nentrypoint: ../other/run.py\ncommands: [{name: poll, type: read}]\n",
     ["entrypoint '../other/run.py' has a '..' component", ":3"]),
    ("name: demo\nprotocol: 2\nentrypoint: bin/../../run.py\ncommands: [{name: poll, type: read}]\n",
     ["'..' component"]),
    ("name: demo\nprotocol: 2\nentrypoint: \"run\\0.py\"\ncommands: [{name: poll, type: read}]\n", ["NUL"]),
    ("name: demo\nprotocol: 2\nentrypoint: run.py\n", ["commands is required"]),
    ("name: demo\nprotocol: 2\nentrypoint: run.py\ncommands: []\n", ["commands is an empty list"]),
    ("name: demo\nprotocol: 2\nentrypoint: run.py\ncommands: [poll, health]\n",
     ["commands[0] must be a mapping", "{name: poll, type: read}"]),
    ("name: demo\nprotocol: 2\nentrypoint: run.py\ncommands:\n  - {name: poll}\n",
     ["commands[0].type is required", ":5", "type: read"]),
    ("name: demo\nprotocol: 2\nentrypoint: run.py\ncommands:\n  - {name: poll, type: read}\n  - {name: go, type: exec}\n",
     ["commands[1].type must be read or write, got 'exec'", ":6"]),
    ("name: demo\nprotocol: 2\nentrypoint: run.py\ncommands:\n  - {name: 9lives, type: read}\n",
     ["commands[0].name '9lives' is not a valid command name"]),
    ("name: demo\nprotocol: 2\nentrypoint: run.py\ncommands:\n  - {name: poll, type: read}\n  - {name: poll, type: write}\n",
     ["commands[1].name repeats command 'poll'", "line 5", ":6"]),
    ("name: demo\nprotocol: 2\nentrypoint: run.py\ncommands:\n  - {name: poll, type: read, idempotent: maybe}\n",
     ["commands[0].idempotent must be true or false"]),
    (MINIMAL + "concurrency_safe: sometimes\n", ["concurrency_safe must be true or false", ":6"]),
    (MINIMAL + "config_keys: message\n", ["config_keys must be a list"]),
    (MINIMAL + "config_keys: {required: [1]}\n", ["config_keys.required[0] must be a key name"]),
    (MINIMAL + "manifest_spec: something.else\n", ["manifest_spec must be ductile.plugin"]),
    (MINIMAL + "manifest_version: 2\n", ["manifest_version must be 1"]),
    (MINIMAL + "description: [a, b]\n", ["description must be text", "quoted"]),
    ("- just\n- a list\n", ["top level must be a mapping", "name:"]),
    ("", ["manifest is empty", "entrypoint"]),
    ("# only a comment\n", ["manifest is empty"]),
    ("name: demo\nname: again\n", ["duplicate key 'name'", ":2"]),
    ("name: [unclosed\n", ["YAML syntax error"]),
]


@pytest.mark.parametrize(("text", "needles"), BAD, ids=[n[0] for _, n in BAD])
def test_bad_manifest_is_one_line_naming_place_and_fix(tmp_path: Path, text: str, needles: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PluginError) as caught:
        parse_manifest(path)
    line = caught.value.one_line()
    assert "\n" not in line and line.startswith(path), line
    assert caught.value.fix, line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert "include:" not in line  # the config's advice never leaks into a manifest refusal


def test_not_utf8_manifest_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_bytes(b"name: demo\ndescription: \xff\xfe\n")
    with pytest.raises(PluginError, match="manifest is not valid UTF-8") as caught:
        parse_manifest(str(path))
    assert caught.value.where.endswith(":2")


def test_alias_bomb_is_refused_not_expanded(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 8):
        lines.append(f"a{i}: &a{i} [{', '.join(['*a' + str(i - 1)] * 10)}]")
    path = write(tmp_path, MINIMAL + "\n".join(lines) + "\n")
    with pytest.raises(PluginError, match="YAML bomb"):
        parse_manifest(path)


def test_unknown_keys_warn_and_do_not_refuse(tmp_path: Path) -> None:
    text = MINIMAL.replace("type: read}", "type: read, timeout: 5}") + "colour: blue\n"
    manifest, findings = parse_manifest(write(tmp_path, text))
    assert manifest.name == "demo"
    assert [(f.severity, f.field) for f in findings] == [("warning", "colour"), ("warning", "commands[0].timeout")]
    assert findings[0].where.endswith("manifest.yaml:6") and "colour" in findings[0].message and findings[0].fix


def test_numeric_text_fields_are_accepted_as_text(tmp_path: Path) -> None:
    # upstream's YAML decoder reads a number into a string field as its text
    manifest, findings = parse_manifest(write(tmp_path, MINIMAL + "version: 2\ndescription: 42\n"))
    assert (manifest.version, manifest.description) == ("2", "42") and findings == []
    _, findings = parse_manifest(write(tmp_path, MINIMAL + "version: 1.10\n"))
    assert [f.field for f in findings] == ["version"] and "quote" in findings[0].fix


def test_key_listed_required_and_optional_warns_once(tmp_path: Path) -> None:
    manifest, findings = parse_manifest(write(tmp_path, MINIMAL + "config_keys: {required: [a], optional: [a, b]}\n"))
    assert manifest.config_keys == ("a", "b")
    assert [f.field for f in findings] == ["config_keys"]


def test_dotdot_inside_a_name_is_not_a_component(tmp_path: Path) -> None:
    manifest, _ = parse_manifest(write(tmp_path, MINIMAL.replace("run.py", "bin/run..py")))
    assert manifest.entrypoint == "bin/run..py"
