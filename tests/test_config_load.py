"""The loader: discovery, include, ${ENV}, durations, relative paths, rules, and its
contract under arbitrary input (a model or a ConfigError, nothing else)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import EXAMPLES

from ductile.config import load_config
from ductile.config.load import discover, inspect_config
from ductile.config.model import Config
from ductile.config.rules import config_rules
from ductile.config.show import effective_view
from ductile.config.units import format_duration, format_size, parse_duration, parse_size
from ductile.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_example_config_loads_with_includes_and_relative_paths() -> None:
    loaded = load_config(str(EXAMPLES / "etc" / "config.yaml"), env={})
    cfg = loaded.config
    assert set(cfg.plugins) == {"echo", "counter", "notify"}  # from the included plugins.yaml
    assert cfg.plugin_roots == (str(EXAMPLES / "plugins"),)
    assert cfg.state.path == str(EXAMPLES / "state" / "ductile.db")
    assert cfg.api.listen == "127.0.0.1:8080"  # ${DUCTILE_LISTEN:-...} default
    assert cfg.plugins["echo"].timeouts == {"poll": 10.0}
    assert cfg.timeout_for("echo", "handle") == 120.0
    assert cfg.accounts["default"].uid == 61001
    assert len(loaded.files) == 2


@pytest.mark.parametrize("text,seconds", [("500ms", 0.5), ("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86400),
                                          ("1h30m", 5400), ("1.5s", 1.5)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("n,text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
                                    (5 * 1024**2, "5.0 MiB"), (3 * 1024**3 + 1024**3 // 5, "3.2 GiB"),
                                    (2048 * 1024**3, "2048.0 GiB")])
def test_sizes_for_people(n: int, text: str) -> None:
    assert format_size(n) == text


@pytest.mark.parametrize("bad", ["", "30", "5 m", "m5", "1w", "-1s", "1h-5m", "ten seconds"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize("text,size", [(0, 0), (1024, 1024), ("64KiB", 65536), ("4MiB", 4 << 20), ("1KB", 1000), ("7B", 7)])
def test_sizes(text, size) -> None:  # type: ignore[no-untyped-def]
    assert parse_size(text) == size


def test_discovery_order(tmp_path: Path) -> None:
    a = write(tmp_path / "a" / "config.yaml", "service: {name: a}\n")
    home = tmp_path / "home"
    b = write(home / ".config" / "ductile" / "config.yaml", "service: {name: b}\n")
    assert discover(str(a.parent), {}) == str(a)                        # --config DIR
    assert discover(str(a), {"DUCTILE_CONFIG_DIR": str(home)}) == str(a)  # --config wins
    assert discover(None, {"DUCTILE_CONFIG_DIR": str(a.parent), "HOME": str(home)}) == str(a)
    assert discover(None, {"HOME": str(home)}) == str(b)
    if not os.path.exists("/etc/ductile/config.yaml"):
        with pytest.raises(ConfigError, match="no configuration found"):
            discover(None, {"HOME": str(tmp_path / "nobody")})


def test_include_directory_merges_sorted_and_anchors_paths_at_the_declaring_file(tmp_path: Path) -> None:
    write(tmp_path / "config.yaml", "include: [conf.d]\nplugin_roots: [plugins]\n")
    write(tmp_path / "conf.d" / "10-a.yaml", "plugin_roots: [more]\nplugins: {a: {}}\n")
    write(tmp_path / "conf.d" / "20-b.yaml", "plugins: {b: {config: {x: 1}}}\n")
    write(tmp_path / "conf.d" / "ignored.txt", "not yaml")
    cfg = load_config(str(tmp_path), env={}).config
    assert cfg.plugin_roots == (str(tmp_path / "conf.d" / "more"), str(tmp_path / "plugins"))
    assert set(cfg.plugins) == {"a", "b"}


def test_conflicting_scalars_across_files_name_both_places(tmp_path: Path) -> None:
    write(tmp_path / "config.yaml", "include: [b.yaml]\nservice: {max_workers: 2}\n")
    write(tmp_path / "b.yaml", "service: {max_workers: 3}\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(tmp_path), env={})
    line = err.value.one_line()
    assert "config.yaml:2" in line and "b.yaml:1" in line and "service.max_workers" in line


def test_env_interpolation(tmp_path: Path) -> None:
    write(tmp_path / "config.yaml", "service: {name: '${NAME}-x'}\nstate: {path: '${DIR:-/srv}/db'}\nplugins: {a: {config: {x: '$${HOST}'}}}\n")
    with pytest.raises(ConfigError, match="NAME is not set"):
        load_config(str(tmp_path), env={})
    cfg = load_config(str(tmp_path), env={"NAME": "gw"}).config
    assert cfg.service.name == "gw-x" and cfg.state.path == "/srv/db"
    assert cfg.plugins["a"].config == {"x": "${HOST}"}  # $$ is a literal $


def test_yaml_on_key_is_text_not_boolean(tmp_path: Path) -> None:
    write(tmp_path / "config.yaml", "plugins: {echo: {}}\npipelines:\n  - name: p\n    on: echo.done\n    steps: [{uses: echo}]\n")
    assert load_config(str(tmp_path), env={}).config.pipelines[0].on.event == "echo.done"


def test_merge_keys_are_supported(tmp_path: Path) -> None:
    write(tmp_path / "config.yaml", """\
        x-acct: &acct {gid: 61001}
        """)
    # an unknown top-level key is still refused; merge keys work inside known keys
    with pytest.raises(ConfigError, match="unknown key 'x-acct'"):
        load_config(str(tmp_path), env={})
    write(tmp_path / "config.yaml", """\
        plugins:
          a: &base {retry: {max_attempts: 2}}
          b: {<<: *base, enabled: false}
        """)
    cfg = load_config(str(tmp_path), env={}).config
    assert cfg.plugins["b"].retry.max_attempts == 2 and cfg.plugins["b"].enabled is False


def test_account_uid_equal_to_gateway_is_refused() -> None:
    cfg = load_config(str(EXAMPLES / "etc" / "config.yaml"), env={}).config
    findings = config_rules(cfg, gateway_uid=61001)
    assert [f.field for f in findings if f.severity == "error"] == ["accounts.default.uid"]
    assert "gateway's own uid" in findings[0].message


def test_missing_tiers_are_warnings_not_errors(tmp_path: Path) -> None:
    write(tmp_path / "config.yaml", "accounts:\n  solo: {uid: 61010, gid: 61010, state_dir: /var/lib/x/solo}\n")
    loaded, findings = inspect_config(str(tmp_path), env={})
    assert loaded is not None
    assert {f.field for f in findings if f.severity == "warning"} >= {"accounts.default", "accounts.untrusted"}


def test_effective_view_round_trips(tmp_path: Path) -> None:
    cfg = load_config(str(EXAMPLES / "etc" / "config.yaml"), env={}).config
    write(tmp_path / "config.yaml", yaml.safe_dump(effective_view(cfg)))
    again = load_config(str(tmp_path), env={}).config
    assert again == cfg


def test_show_redacts_secret_looking_plugin_config(tmp_path: Path) -> None:
    from ductile.config.show import raw_view

    write(tmp_path / "config.yaml", "plugins: {a: {config: {api_key: s3cr3t, nested: {password: pw}, url: http://x, token_ref: t}}}\n")
    loaded = load_config(str(tmp_path), env={})
    for view in (raw_view(loaded.raw), effective_view(loaded.config)):
        text = repr(view)
        assert "s3cr3t" not in text and "'pw'" not in text and "http://x" in text and "'t'" in text


# ---- the loader's contract under arbitrary input ------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=False),
                    st.text(max_size=20))
keys = st.one_of(st.sampled_from(["service", "state", "secrets", "plugin_roots", "accounts", "plugins",
                                  "pipelines", "api", "webhooks", "include", "uid", "gid", "state_dir",
                                  "run_as", "schedules", "every", "cron", "default", "untrusted", "echo",
                                  "max_workers", "timeouts", "poll", "steps", "uses", "on", "tokens", "scopes"]),
                 st.text(max_size=8))
documents = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(keys, inner, max_size=5)), max_leaves=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=documents)
def test_any_mapping_gives_a_model_or_a_config_error(tmp_path: Path, doc: object) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        assert isinstance(load_config(str(path), env={}).config, Config)
    except ConfigError as err:
        assert err.one_line() and "\n" not in err.one_line()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_any_text_gives_a_model_or_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(text.encode("utf-8", errors="replace"))
    try:
        load_config(str(path), env={})
    except ConfigError as err:
        assert "\n" not in err.one_line()
