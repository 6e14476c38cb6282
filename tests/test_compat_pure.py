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


# -- 1. the api.trigger envelope, decided where the request is built -------------------------

@pytest.mark.parametrize(("command", "event", "expect"), [
    ("handle", None, {"type": "api.trigger", "payload": {"url": "https://x"}}),
    ("handle", {"type": "echo.done", "payload": {"a": 1}}, {"type": "echo.done", "payload": {"a": 1}}),
    ("poll", None, None),
    ("poll", {"type": "webhook", "payload": {}}, {"type": "webhook", "payload": {}}),
])
def test_a_handle_job_without_an_event_gets_upstreams_envelope(command: str, event: dict | None,
                                                              expect: dict | None) -> None:
    import json

    from ductile.plugins.protocol import build_request

    request = json.loads(build_request(job_id="j", command=command, config={}, state={}, payload={"url": "https://x"},
                                       event=event))
    assert request.get("event") == expect
    assert request["payload"] == {"url": "https://x"}  # the payload stays where ductile's plugins read it


# -- 2. upstream's API body -----------------------------------------------------------------

@pytest.mark.parametrize(("body", "payload"), [
    ({"payload": {"url": "u"}}, {"url": "u"}),                          # upstream's clients
    ({"url": "u"}, {"url": "u"}),                                       # ductile's
    ({"payload": {"url": "u"}, "other": 1}, {"payload": {"url": "u"}, "other": 1}),  # payload is one key among others
    ({"payload": "text"}, {"payload": "text"}),                         # not an object: left as sent
    ({"payload": {}}, {}),
    ({}, {}),
])
def test_a_body_whose_only_key_is_payload_is_unwrapped(body: dict, payload: dict) -> None:
    from ductile.serve.bodies import unwrap_payload

    assert unwrap_payload(body) == payload


# -- 4. parallelism -------------------------------------------------------------------------

@pytest.mark.parametrize(("configured", "safe", "cap"), [
    (None, True, None), (None, False, 1), (1, True, 1), (3, True, 3), (2, False, 2), (1, False, 1)])
def test_parallelism_table(configured: int | None, safe: bool, cap: int | None) -> None:
    from ductile.runtime.concurrency import limit_of

    assert limit_of(safe, configured) == cap


def test_parallelism_loads_and_doctor_warns_when_it_cannot_help_or_overrides_the_manifest() -> None:
    from ductile.config.model import Config, PluginConfig, ServiceConfig
    from ductile.config.rules import plugin_rules

    found = plugin_rules(Config(service=ServiceConfig(max_workers=2), plugins={"p": PluginConfig(parallelism=5)}))
    assert [f.field for f in found] == ["plugins.p.parallelism"] and "max_workers 2" in found[0].message


# -- 5. dedupe_key --------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "key"), [("file:/a", "file:/a"), (42, "42"), (None, None), ("", None)])
def test_an_events_dedupe_key_is_kept(raw: object, key: str | None) -> None:
    import json

    from ductile.plugins.protocol import decode_response

    answer = {"status": "ok", "events": [{"type": "w.changed", "payload": {}, "dedupe_key": raw}]}
    assert decode_response(json.dumps(answer).encode(), truncated=False).events[0].dedupe_key == key


@pytest.mark.parametrize(("raw", "needle"), [({"a": 1}, "must be a string"), ("k" * 513, "at most 512")])
def test_a_bad_dedupe_key_is_a_clear_protocol_error(raw: object, needle: str) -> None:
    import json

    from ductile.errors import ProtocolError
    from ductile.plugins.protocol import decode_response

    answer = {"status": "ok", "events": [{"type": "w.changed", "dedupe_key": raw}]}
    with pytest.raises(ProtocolError) as caught:
        decode_response(json.dumps(answer).encode(), truncated=False)
    assert needle in caught.value.one_line() and "events[0].dedupe_key" in caught.value.one_line()


def test_a_routed_key_is_dropped_within_the_ttl_unless_its_job_failed(tmp_path) -> None:
    from ductile.state.db import open_state
    from ductile.state.jobs import Failed, Succeeded

    db = open_state(str(tmp_path / "d.db"))

    def make() -> str:
        return db.jobs.enqueue("w", "handle", {}, max_attempts=1)

    first = db.dedupe.claim(["route:k"], 100, make, now=10, unless_failed=True)
    again = db.dedupe.claim(["route:k"], 100, make, now=20, unless_failed=True)  # still queued: a duplicate
    assert not first.duplicate and again.duplicate and again.job_id == first.job_id
    claimed = db.jobs.claim_next(1e12)
    assert claimed is not None and claimed.id == first.job_id
    db.jobs.finish(first.job_id, Failed("broke", "plugin_retry_false"))
    retried = db.dedupe.claim(["route:k"], 100, make, now=30, unless_failed=True)  # it failed: route again
    assert not retried.duplicate and retried.job_id != first.job_id
    db.jobs.claim_next(1e12)
    db.jobs.finish(retried.job_id, Succeeded("ok"))
    assert db.dedupe.claim(["route:k"], 100, make, now=40, unless_failed=True).duplicate
    assert not db.dedupe.claim(["route:k"], 100, make, now=200, unless_failed=True).duplicate  # past the ttl
    db.close()


# -- 6. fact_outputs ------------------------------------------------------------------------

FACTS = "commands: [{name: poll, type: read}]\nfact_outputs:\n"


@pytest.mark.parametrize(("rules", "needle"), [
    ("  - {when: {command: sync}, from: state_updates, fact_type: x.s}\n", "declared command"),
    ("  - {when: {command: poll}, from: result, fact_type: x.s}\n", "must be state_updates"),
    ("  - {when: {command: poll}, from: state_updates}\n", "fact_type is required"),
    ("  - {when: {command: poll}, from: state_updates, fact_type: x.s, compatibility_view: merge}\n", "mirror_object"),
    ("  {when: poll}\n", "must be a list"),
])
def test_fact_outputs_are_refused_where_upstream_refuses_them(tmp_path, rules: str, needle: str) -> None:
    from ductile.errors import PluginError
    from ductile.plugins.manifest import parse_manifest

    (tmp_path / "manifest.yaml").write_text("name: f\nprotocol: 2\nentrypoint: run\n" + FACTS + rules)
    with pytest.raises(PluginError) as caught:
        parse_manifest(str(tmp_path / "manifest.yaml"))
    assert needle in caught.value.one_line() and "fact_outputs" in caught.value.one_line()


@pytest.mark.parametrize(("view", "mode"), [("mirror_object", "replace"), ("", "merge"), (None, "merge")])
def test_mirror_object_replaces_the_state_and_anything_else_merges(tmp_path, view: str | None, mode: str) -> None:
    from ductile.plugins.manifest import parse_manifest
    from ductile.state.db import open_state

    extra = f", compatibility_view: {view or chr(34) * 2}" if view is not None else ""
    (tmp_path / "manifest.yaml").write_text("name: f\nprotocol: 2\nentrypoint: run\n" + FACTS
                                            + f"  - {{when: {{command: poll}}, from: state_updates, fact_type: f.s{extra}}}\n")
    manifest, _ = parse_manifest(str(tmp_path / "manifest.yaml"))
    assert manifest.state_mode("poll") == mode
    db = open_state(str(tmp_path / "d.db"))
    db.plugin_state.merge_state("f", {"stale": 1, "kept": 1})
    after = db.plugin_state.apply("f", {"kept": 2}, manifest.state_mode("poll"))
    assert after == ({"kept": 2} if mode == "replace" else {"stale": 1, "kept": 2})
    assert db.plugin_state.get_state("f") == after
    db.close()
