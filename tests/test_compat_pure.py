"""Upstream compatibility (#12), the pure parts as tables: one name rule with one text that
states it, the api.trigger envelope, upstream's API body, parallelism, dedupe keys and
fact_outputs."""

from __future__ import annotations

import re

import pytest

from ductile.config.model import (
    ACCOUNT_NAME,
    ACCOUNT_NAME_HINT,
    COMMAND_NAME,
    COMMAND_NAME_HINT,
    NAME,
    NAME_HINT,
)

# -- one name rule, one text --------------------------------------------------------------

NAME_RULES = [
    # (pattern, hint, accepted, refused)
    (NAME, NAME_HINT, ["_template", "echo", "9lives", "a.b-c_d", "_", "Py-Greet"], ["-x", ".x", "x y", "", "é", "a/b"]),
    (ACCOUNT_NAME, ACCOUNT_NAME_HINT, ["default", "untrusted", "a_b-1"], ["Default", "_a", "1a", "-a", "a.b", ""]),
    (COMMAND_NAME, COMMAND_NAME_HINT, ["poll", "handle", "Sync_2-x"], ["_x", "1x", "-x", "a.b", ""]),
]


@pytest.mark.parametrize(("pattern", "hint", "good", "bad"), NAME_RULES, ids=["plugin", "account", "command"])
def test_each_name_rule_and_the_words_that_state_it_agree(pattern: str, hint: str, good: list[str],
                                                           bad: list[str]) -> None:
    for name in good:
        assert re.fullmatch(pattern, name), name
    for name in bad:
        assert not re.fullmatch(pattern, name), name
    # the hint names exactly the characters the pattern allows first, and the ones it allows after
    first, _, rest = hint.partition(", starting with ")
    starts = {"a letter": "a", "a digit": "1", "'_'": "_", "a lowercase letter": "a"}
    for words, probe in starts.items():
        allowed_first = bool(re.fullmatch(pattern, probe + "x"))
        if words in rest:
            assert allowed_first, f"{hint!r} says a name may start with {words}, {pattern} does not allow it"
    assert ("'_'" in rest) == bool(re.fullmatch(pattern, "_x")), hint
    assert ("a digit" in rest) == bool(re.fullmatch(pattern, "1x")), hint
    for ch, words in (("_", "'_'"), (".", "'.'"), ("-", "'-'")):
        assert (words in first) == bool(re.fullmatch(pattern, "a" + ch + "b")), (hint, ch)


def test_a_plugin_named_like_upstreams_template_loads_from_the_manifest_and_the_config(tmp_path) -> None:
    from ductile.config import load_config
    from ductile.plugins.manifest import parse_manifest

    (tmp_path / "manifest.yaml").write_text(
        "manifest_spec: ductile.plugin\nmanifest_version: 1\nname: _template\nprotocol: 2\nentrypoint: run.py\n"
        "commands: [{name: handle, type: write}]\n")
    manifest, findings = parse_manifest(str(tmp_path / "manifest.yaml"))
    assert manifest.name == "_template" and not findings
    (tmp_path / "config.yaml").write_text("plugin_roots: [.]\nplugins:\n  _template: {}\n")
    assert "_template" in load_config(str(tmp_path), env={}).config.plugins


@pytest.mark.parametrize(("where", "text", "needle"), [
    ("manifest", "name: -bad\nprotocol: 2\nentrypoint: run\ncommands: [{name: poll, type: read}]\n", NAME_HINT),
    ("manifest", "name: ok\nprotocol: 2\nentrypoint: run\ncommands: [{name: _poll, type: read}]\n", COMMAND_NAME_HINT),
    ("config", "plugins:\n  .bad: {}\n", NAME_HINT),
    ("config", "accounts:\n  Bad: {uid: 7, gid: 7, state_dir: /x}\n", ACCOUNT_NAME_HINT),
])
def test_every_refused_name_quotes_the_rule(tmp_path, where: str, text: str, needle: str) -> None:
    from ductile.config import load_config
    from ductile.errors import DuctileError
    from ductile.plugins.manifest import parse_manifest

    path = tmp_path / ("manifest.yaml" if where == "manifest" else "config.yaml")
    path.write_text(text)
    with pytest.raises(DuctileError) as caught:
        parse_manifest(str(path)) if where == "manifest" else load_config(str(tmp_path), env={})
    assert needle in caught.value.one_line()
