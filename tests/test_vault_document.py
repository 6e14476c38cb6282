"""The vault document and its pure transforms: parse/serialize, lifecycle rules, refs, intake."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ductile.errors import VaultError
from ductile.vault import ops
from ductile.vault.document import (
    NONCE_BYTES,
    PrincipalRecord,
    SecretRecord,
    VaultDocument,
    new_document,
    nonce,
    parse,
    serialize,
)
from ductile.vault.intake import MAX_VALUE_BYTES, normalize_value, read_value
from ductile.vault.refs import resolve_secret_ref, tokens_equal

T0, T1 = "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"
VALUE = "value-7f3a9c"


def _doc() -> VaultDocument:
    doc = new_document(bytes(range(NONCE_BYTES)))
    doc = ops.add_principal(doc, "echo", T0)
    doc, _ = ops.set_secret(doc, "tok", VALUE, ["echo"], T0)
    return doc


def test_serialize_then_parse_is_identity_and_nonce_is_32_bytes() -> None:
    doc = _doc()
    assert parse(serialize(doc)) == doc
    assert nonce(doc) == bytes(range(32)) and len(nonce(doc)) == 32


def test_a_minimal_hand_written_document_parses() -> None:
    doc = parse(json.dumps({"version": 1, "nonce": "ab" * 32}).encode())
    assert doc.principals == {} and doc.secrets == {}


@pytest.mark.parametrize("mutate,field", [
    (lambda d: d.update(extra=1), "extra"),
    (lambda d: d.pop("nonce"), "nonce"),
    (lambda d: d.update(nonce="ab" * 16), "nonce"),
    (lambda d: d.update(version="1"), "version"),
    (lambda d: d["principals"].update(Bad_Name={"status": "active", "created_at": T0}), "principals.Bad_Name"),
    (lambda d: d["principals"]["echo"].update(status="paused"), "principals.echo.status"),
    (lambda d: d["principals"]["echo"].update(created_at="yesterday"), "principals.echo.created_at"),
    (lambda d: d["secrets"]["tok"].update(value=["not", "text"]), "secrets.tok.value"),
    (lambda d: d["secrets"]["tok"].update(value=""), "secrets.tok.value"),
    (lambda d: d["secrets"]["tok"].update(principals=["Echo"]), "secrets.tok.principals"),
    (lambda d: d["secrets"]["tok"].update(roll_count=-1), "secrets.tok.roll_count"),
    (lambda d: d["secrets"]["tok"].update(colour="red"), "secrets.tok.colour"),
])
def test_parse_is_strict_and_names_the_field_never_the_value(mutate, field: str) -> None:  # type: ignore[no-untyped-def]
    raw = json.loads(serialize(_doc()))
    mutate(raw)
    with pytest.raises(VaultError) as info:
        parse(json.dumps(raw).encode(), "/v/vault.age")
    line = info.value.one_line()
    assert field in line and "/v/vault.age" in line and "fix:" in line
    assert VALUE not in line


def test_future_versions_and_non_json_are_refused() -> None:
    with pytest.raises(VaultError, match="version 2"):
        parse(json.dumps({"version": 2, "nonce": "ab" * 32}).encode())
    with pytest.raises(VaultError, match="not JSON"):
        parse(b'{"version": 1, "secrets": {"x": {"value": "' + VALUE.encode())
    with pytest.raises(VaultError) as info:
        parse(b'{"version": 1, "secrets": {"x": {"value": "' + VALUE.encode())
    assert VALUE not in str(info.value)


def test_reprs_redact_values_and_the_nonce() -> None:
    doc = _doc()
    for obj in (doc, doc.secrets["tok"], doc.secrets):
        for text in (repr(obj), str(obj)):
            assert VALUE not in text and doc.nonce_hex not in text
    assert "tok" in repr(doc) and "<redacted>" in repr(doc.secrets["tok"])


def test_set_creates_then_rolls_and_merges_grants() -> None:
    doc = ops.add_principal(_doc(), "other", T0)
    doc, created = ops.set_secret(doc, "tok", "second", ["other"], T1)
    record = doc.secrets["tok"]
    assert not created and record.value == "second" and record.principals == ("echo", "other")
    assert record.roll_count == 1 and record.rolled_at == T1 and record.created_at == T0
    doc, created = ops.set_secret(doc, "fresh", "v", [], T1)
    assert created and doc.secrets["fresh"].principals == () and doc.secrets["fresh"].rolled_at is None


@pytest.mark.parametrize("action,words", [
    (lambda d: ops.set_secret(d, "tok", "v", ["nobody"], T1), "principal nobody: is not in the vault"),
    (lambda d: ops.set_secret(d, "bad name", "v", [], T1), "is not allowed"),
    (lambda d: ops.set_secret(d, "tok", "", [], T1), "empty"),
    (lambda d: ops.grant(d, "missing", "echo"), "secret missing: is not in the vault"),
    (lambda d: ops.grant(d, "tok", "Not-Kebab"), "not kebab-case"),
    (lambda d: ops.grant(ops.revoke_principal(d, "echo", T1), "tok", "echo"), "revoked"),
    (lambda d: ops.add_principal(d, "echo", T1), "already in the vault"),
    (lambda d: ops.add_principal(ops.revoke_principal(d, "echo", T1), "echo", T1), "cannot be re-added"),
    (lambda d: ops.revoke_principal(d, "nobody", T1), "principal nobody: is not in the vault"),
    (lambda d: ops.revoke_principal(ops.revoke_principal(d, "echo", T1), "echo", T1), "already revoked"),
])
def test_lifecycle_refusals_name_the_thing_and_the_fix(action, words: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(VaultError) as info:
        action(_doc())
    assert words in info.value.one_line() and info.value.fix and VALUE not in info.value.one_line()


def test_grant_and_revoke_report_whether_anything_changed() -> None:
    doc = ops.add_principal(_doc(), "other", T0)
    doc, changed = ops.grant(doc, "tok", "other")
    assert changed and doc.secrets["tok"].principals == ("echo", "other")
    same, changed = ops.grant(doc, "tok", "other")
    assert not changed and same is doc
    doc, changed = ops.revoke(doc, "tok", "echo")
    assert changed and doc.secrets["tok"].principals == ("other",)
    same, changed = ops.revoke(doc, "tok", "echo")
    assert not changed and same is doc


def test_revoking_a_principal_keeps_its_record_and_stamps_it() -> None:
    doc = ops.revoke_principal(_doc(), "echo", T1)
    assert doc.principals["echo"] == PrincipalRecord("revoked", T0, T1)


def test_resolve_secret_ref_names_the_ref_not_a_value() -> None:
    assert resolve_secret_ref(_doc(), "tok") == VALUE
    with pytest.raises(VaultError) as info:
        resolve_secret_ref(_doc(), "api-ops")
    assert "api-ops" in info.value.one_line() and VALUE not in info.value.one_line()


def test_tokens_equal_compares_text_and_bytes() -> None:
    assert tokens_equal("abc", "abc") and tokens_equal(b"abc", "abc") and tokens_equal("é", "é".encode())
    assert not tokens_equal("abc", "abd") and not tokens_equal("abc", "abcd") and not tokens_equal("", "x")


@pytest.mark.parametrize("raw,expected", [
    (b"s3cret\n", "s3cret"), (b"s3cret\r\n", "s3cret"), (b"s3cret\n\n", "s3cret\n"),
    (b"s3cret", "s3cret"), (b" spaced ", " spaced "), ("ünï\n".encode(), "ünï"),
])
def test_intake_strips_exactly_one_trailing_newline(raw: bytes, expected: str) -> None:
    assert normalize_value(raw, "x") == expected


@pytest.mark.parametrize("raw,words", [(b"", "empty"), (b"\n", "empty"), (b"\xff\xfe", "UTF-8"),
                                       (b"x" * (MAX_VALUE_BYTES + 1), "larger")])
def test_intake_refusals(raw: bytes, words: str) -> None:
    with pytest.raises(VaultError, match=words):
        normalize_value(raw, "x")


def test_intake_refuses_a_terminal_and_prefers_the_prompt() -> None:
    with pytest.raises(VaultError) as info:
        read_value("x", io.BytesIO(b"typed"), stdin_is_tty=True)
    assert "terminal" in info.value.one_line() and "--prompt" in info.value.one_line()
    assert read_value("x", io.BytesIO(b"ignored"), stdin_is_tty=True, prompt=lambda: "hidden") == "hidden"
    assert read_value("x", io.BytesIO(b"piped\n"), stdin_is_tty=False) == "piped"


@given(st.dictionaries(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,10}", fullmatch=True),
                       st.text(min_size=1, max_size=20), max_size=6))
def test_any_set_of_values_round_trips_through_serialize(values: dict[str, str]) -> None:
    doc = new_document(b"\x01" * 32)
    for name, value in values.items():
        doc, _ = ops.set_secret(doc, name, value, [], T0)
    back = parse(serialize(doc))
    assert {n: s.value for n, s in back.secrets.items()} == values
    assert replace(back) == doc


def test_secret_record_is_frozen() -> None:
    record = SecretRecord("v", (), T0)
    with pytest.raises(AttributeError):
        record.value = "w"  # type: ignore[misc]
