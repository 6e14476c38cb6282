"""Find, read, include, interpolate, merge, decode and check the configuration.

``load_config`` raises the first error as one ``ConfigError`` naming file:line and the
field; ``inspect_config`` returns every finding for ``doctor``. Both share one pipeline.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ductile.config.decode import Decoder, dotted
from ductile.config.model import Config
from ductile.config.rules import config_rules
from ductile.config.yamlsrc import Mark, Path, interpolate_env, read_yaml
from ductile.errors import ConfigError
from ductile.findings import Finding

CONFIG_NAME = "config.yaml"


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    path: str                       # the root config file
    files: tuple[str, ...]          # every file read, root first
    raw: dict[str, Any]             # merged data as written (after include and ${ENV})
    marks: dict[str, Mark] = field(repr=False)
    findings: tuple[Finding, ...] = ()  # warnings that did not stop the load

    @property
    def directory(self) -> str:
        """The config directory: where `.checksums` lives and what the secret surface guards."""
        return posixpath.dirname(self.path)

    def where(self, field_path: str) -> str:
        return where_of(self.marks, field_path)


def where_of(marks: Mapping[str, Mark], field_path: str) -> str:
    """file:line of ``field_path`` or of its nearest ancestor that has one."""
    probe = field_path
    while probe:
        if probe in marks:
            return str(marks[probe])
        cut = max(probe.rfind("."), probe.rfind("["))
        probe = probe[:cut] if cut > 0 else ""
    return ""


def discover(explicit: str | None, env: Mapping[str, str]) -> str:
    """The root config file: --config (file or dir), $DUCTILE_CONFIG_DIR, ~/.config/ductile, /etc/ductile."""
    if explicit:
        path = os.path.abspath(os.path.expanduser(explicit))
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(path):
            raise ConfigError("no config file here", where=path,
                              fix="pass --config with a config file or a directory holding config.yaml")
        return path
    candidates = []
    if env.get("DUCTILE_CONFIG_DIR"):
        candidates.append(os.path.join(env["DUCTILE_CONFIG_DIR"], CONFIG_NAME))
    home = env.get("HOME") or os.path.expanduser("~")
    candidates += [os.path.join(home, ".config", "ductile", CONFIG_NAME), os.path.join("/etc/ductile", CONFIG_NAME)]
    for cand in candidates:
        if os.path.isfile(cand):
            return os.path.abspath(cand)
    raise ConfigError(f"no configuration found (looked in {', '.join(candidates)})", where="config",
                      fix="pass --config PATH, set DUCTILE_CONFIG_DIR, or try `make serve` for a demo")


class _Tree:
    """Reads a file and its includes into one merged mapping with per-key marks."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.files: list[str] = []

    def interpolate(self, text: str, mark: Mark, path: Path) -> str:
        return interpolate_env(text, dict(self.env), f"{mark}: {dotted(path)}")

    def read(self, path: str, stack: tuple[str, ...]) -> tuple[dict[str, Any], dict[Path, Mark]]:
        real = os.path.realpath(path)
        if real in stack:
            chain = " -> ".join(os.path.basename(p) for p in stack + (real,))
            raise ConfigError(f"include cycle: {chain}", where=path, fix="remove one of the includes")
        self.files.append(path)
        doc = read_yaml(path, self.interpolate)
        data, marks = doc.data, doc.marks
        includes = data.pop("include", [])
        if isinstance(includes, str):
            includes = [includes]
        if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
            raise ConfigError("include must be a list of file or directory paths",
                              where=f"{marks.get(('include',), Mark(path, 1))}: include", fix="write include: [plugins.yaml, conf.d]")
        merged: dict[str, Any] = {}
        merged_marks: dict[Path, Mark] = {}
        for i, inc in enumerate(includes):
            inc_where = f"{marks.get(('include', i), Mark(path, 1))}: include[{i}]"
            target = inc if os.path.isabs(inc) else os.path.join(os.path.dirname(path), inc)
            target = os.path.normpath(os.path.expanduser(target))
            if os.path.isdir(target):
                parts = sorted(os.path.join(target, n) for n in os.listdir(target)
                               if n.endswith((".yaml", ".yml")) and not n.startswith("."))
            elif os.path.isfile(target):
                parts = [target]
            else:
                raise ConfigError(f"included path {target} does not exist", where=inc_where,
                                  fix="fix the path (relative paths are relative to the including file)")
            for part in parts:
                sub, sub_marks = self.read(part, stack + (real,))
                _merge(merged, merged_marks, sub, sub_marks)
        _merge(merged, merged_marks, data, marks)
        return merged, merged_marks


def _merge(dst: dict[str, Any], dst_marks: dict[Path, Mark], src: dict[str, Any], src_marks: dict[Path, Mark]) -> None:
    """Deep-merge ``src`` into ``dst``: mappings merge, lists append, equal scalars agree,
    different scalars are a conflict naming both places."""
    offsets: dict[Path, int] = {}

    def walk(a: dict[str, Any], b: dict[str, Any], path: Path) -> None:
        for key, value in b.items():
            p = path + (key,)
            if key not in a:
                a[key] = value
            elif isinstance(a[key], dict) and isinstance(value, dict):
                walk(a[key], value, p)
            elif isinstance(a[key], list) and isinstance(value, list):
                offsets[p] = len(a[key])
                a[key] = a[key] + value
            elif a[key] != value or type(a[key]) is not type(value):
                raise ConfigError(
                    f"{dotted(p)} is set twice with different values (also at {dst_marks.get(p, '?')})",
                    where=str(src_marks.get(p, "?")), fix="keep one definition",
                )

    walk(dst, src, ())
    for p, mark in src_marks.items():
        shifted: list[str | int] = []
        for i, part in enumerate(p):
            if isinstance(part, int) and p[:i] in offsets:
                part += offsets[p[:i]]
            shifted.append(part)
        dst_marks.setdefault(tuple(shifted), mark)


def _pipeline(explicit: str | None, env: Mapping[str, str] | None, gateway_uid: int | None
              ) -> tuple[LoadedConfig | None, list[Finding]]:
    env = os.environ if env is None else env
    root = discover(explicit, env)
    tree = _Tree(env)
    raw, path_marks = tree.read(root, ())
    marks = {dotted(p): m for p, m in path_marks.items()}

    def resolve(path: Path, text: str) -> str:
        text = os.path.expanduser(text)
        if os.path.isabs(text):
            return posixpath.normpath(text)
        mark = where_of(marks, dotted(path))
        base = os.path.dirname(mark.rsplit(":", 1)[0]) if mark else os.path.dirname(root)
        return posixpath.normpath(os.path.join(base, text))

    decoder = Decoder(resolve)
    config = decoder.decode(Config, raw)
    findings = [Finding("error", "config", dotted(p.path), p.message, p.fix, where_of(marks, dotted(p.path)))
                for p in decoder.problems]
    if not findings and config is not None:
        for f in config_rules(config, gateway_uid):
            findings.append(Finding(f.severity, f.category, f.field, f.message, f.fix, where_of(marks, f.field)))
    loaded = LoadedConfig(config, root, tuple(tree.files), raw, marks,
                          tuple(f for f in findings if f.severity != "error"))
    return (None if any(f.severity == "error" for f in findings) else loaded), findings


def load_config(explicit: str | None = None, *, env: Mapping[str, str] | None = None,
                gateway_uid: int | None = None) -> LoadedConfig:
    """Load and validate; the first error is raised as a ConfigError. ``gateway_uid``
    defaults to this process's euid (the uid the gateway runs as)."""
    uid = os.geteuid() if gateway_uid is None else gateway_uid
    loaded, findings = _pipeline(explicit, env, uid)
    for f in findings:
        if f.severity == "error":
            raise ConfigError(f.message, where=f.location(), fix=f.fix)
    assert loaded is not None
    return loaded


def inspect_config(explicit: str | None = None, *, env: Mapping[str, str] | None = None,
                   gateway_uid: int | None = None) -> tuple[LoadedConfig | None, list[Finding]]:
    """Every finding (errors included) for doctor; a hard read error becomes one finding."""
    uid = os.geteuid() if gateway_uid is None else gateway_uid
    try:
        return _pipeline(explicit, env, uid)
    except ConfigError as err:
        return None, [Finding("error", "config", "", err.message, err.fix, err.where)]
