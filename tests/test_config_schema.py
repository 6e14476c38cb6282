"""The shipped JSON Schema and the loader agree: generated from the same model, checked
here on the examples, on the broken corpus, and on random mutations of a valid config."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import EXAMPLES, run_ductile

from ductile.config import load_config
from ductile.config.decode import Decoder
from ductile.config.model import Config
from ductile.config.schema import config_schema
from ductile.config.show import effective_view

SCHEMA = config_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
BROKEN = Path(__file__).parent / "configs" / "broken"


def schema_ok(doc: Any) -> bool:
    return VALIDATOR.is_valid(doc)


def decoder_verdict(doc: Any) -> tuple[bool, bool]:
    """(accepted, accepted-apart-from-unit-ranges) by the model's decoder."""
    dec = Decoder()
    dec.decode(Config, doc)
    return not dec.problems, all(p.rule == "unit-range" for p in dec.problems)


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_cli_prints_the_same_schema() -> None:
    proc = run_ductile("config", "schema")
    assert proc.returncode == 0 and json.loads(proc.stdout) == json.loads(json.dumps(SCHEMA))


def test_every_field_is_documented() -> None:
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for name, prop in node.get("properties", {}).items():
                assert prop.get("description"), f"{name} has no description"
            for v in node.values():
                walk(v)
    walk(SCHEMA)


def test_examples_validate_raw_and_effective() -> None:
    loaded = load_config(str(EXAMPLES / "etc" / "config.yaml"), env={})
    assert schema_ok(loaded.raw)
    assert schema_ok(effective_view(loaded.config))


@pytest.mark.parametrize("name", ["uid_zero", "uid_too_big", "negative_gid", "relative_state_dir", "unknown_top_key",
                                  "unknown_account_key", "literal_api_token", "wrong_type_max_workers",
                                  "wrong_type_plugin_roots", "bad_duration", "snake_case_principal", "bad_cron",
                                  "bad_listen", "bad_scope", "bad_account_name", "missing_uid", "pipeline_no_steps",
                                  "bad_size", "wrong_type_enabled", "null_section"])
def test_schema_rejects_what_the_loader_rejects_field_by_field(name: str) -> None:
    doc = yaml.safe_load((BROKEN / f"{name}.yaml").read_text())
    assert not schema_ok(doc)
    assert not decoder_verdict(doc)[0]


# ---- agreement under random single mutations of a valid document ------------------

BASE = load_config(str(EXAMPLES / "etc" / "config.yaml"), env={}).raw


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


PATHS = [p for p in _paths(BASE) if p]
# no newlines: Python's jsonschema applies `$` with re.search, which (unlike ECMA-262)
# also matches before a trailing newline; the decoder uses full matches.
text = st.text(alphabet=st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), max_size=12)
values = st.one_of(
    st.none(), st.booleans(), text,
    st.sampled_from([0, 1, -1, 2, 256, 257, 1023, 1024, 65535, 2147483647, 2147483648]),
    st.integers(-5, 3_000_000_000),
    st.sampled_from(["30s", "5m", "0s", "1d", "4MiB", "*/5 * * * *", "0 7 * * *", "/abs/path", "rel/path",
                     "127.0.0.1:8080", "host:0", "kebab-name", "snake_name", "*", "echo:ro", "echo:rw", "poll",
                     "handle", "debug", "echo.done"]),
    st.lists(st.sampled_from(["/a", "b", "*", "x:ro"]), max_size=2),
    st.dictionaries(st.sampled_from(["uid", "gid", "state_dir", "every", "cron", "name", "zz"]),
                    st.one_of(st.integers(0, 70000), st.sampled_from(["/x/y", "5m", "0 7 * * *", "n"])), max_size=3),
)


@settings(max_examples=400, deadline=None)
@given(path=st.sampled_from(PATHS), value=values, add_key=st.booleans())
def test_schema_and_decoder_agree_on_mutations(path: tuple, value: Any, add_key: bool) -> None:
    doc = copy.deepcopy(BASE)
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    if add_key and isinstance(parent, dict):
        parent[f"{path[-1]}_extra"] = value
    else:
        parent[path[-1]] = value
    accepted, accepted_but_ranges = decoder_verdict(doc)
    valid = schema_ok(doc)
    if accepted:
        assert valid, f"schema rejects a document the loader accepts: {path}={value!r}"
    if valid:
        assert accepted_but_ranges, f"schema accepts a document the loader rejects: {path}={value!r}"
