"""Read one YAML file into plain data plus the file:line of every key — safely.

Hostile input is refused, not expanded: the file size is capped, alias expansion is
counted (a billion-laughs document stops after ``MAX_NODES`` nodes instead of eating
memory), nesting depth is capped, duplicate keys and unknown tags are errors. Only plain
data comes out: str, int, float, bool, None, list, dict (timestamps stay text).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from ductile.errors import ConfigError

MAX_BYTES = 1024 * 1024
MAX_NODES = 100_000
MAX_DEPTH = 64

Path = tuple[str | int, ...]
_PLAIN_TAGS = {
    "tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null", "tag:yaml.org,2002:timestamp",
}
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"

try:  # the C loader is much faster where libyaml is present; same semantics
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader


@dataclass(frozen=True)
class Mark:
    file: str
    line: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Document:
    data: Any
    marks: dict[Path, Mark]


@dataclass(frozen=True)
class Wording:
    """How refusals name the file and what to put in it, so one hardened reader serves
    both the config and plugin manifests without telling a plugin author to use include:."""

    noun: str = "config file"
    fill: str = "add settings (see examples/etc/config.yaml) or remove the file / include"
    shrink: str = "split it with include: or remove what does not belong in a config"
    top: str = "start the file with keys such as service:, plugins:"


CONFIG_WORDING = Wording()


def read_yaml(path: str, interpolate: Callable[[str, Mark, Path], str] | None = None, *,
              wording: Wording = CONFIG_WORDING) -> Document:
    """Parse ``path``; every error is a ConfigError located at ``file:line``."""
    noun = wording.noun
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"cannot read {noun}: {err.strerror}", where=path,
                          fix="check the path and its permissions") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{noun} is larger than {MAX_BYTES // 1024} KiB", where=path,
                          fix=wording.shrink)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(f"{noun} is not valid UTF-8", where=f"{path}:{line}",
                          fix="save the file as UTF-8") from None
    if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        raise ConfigError(f"{noun} is empty", where=path, fix=wording.fill)
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        problem = " ".join(str(err.problem or err.context or "invalid YAML").split())
        raise ConfigError(f"YAML syntax error: {problem}", where=where,
                          fix="correct the YAML at that line (indentation, quotes, colons)") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"YAML error: {' '.join(str(err).split())}", where=path, fix="correct the YAML") from None
    if node is None:
        raise ConfigError(f"{noun} is empty", where=path, fix=wording.fill)
    builder = _Builder(path, interpolate)
    data = builder.build(node, (), 0)
    if not isinstance(data, dict):
        raise ConfigError(f"top level must be a mapping of settings, got a {type(data).__name__}",
                          where=f"{path}:{node.start_mark.line + 1}", fix=wording.top)
    return Document(data, builder.marks)


class _Builder:
    def __init__(self, file: str, interpolate: Callable[[str, Mark, Path], str] | None) -> None:
        self.file = file
        self.interpolate = interpolate
        self.marks: dict[Path, Mark] = {}
        self.count = 0
        self.scalar = yaml.SafeLoader("")  # only its scalar constructors are used

    def mark(self, node: yaml.Node) -> Mark:
        return Mark(self.file, node.start_mark.line + 1)

    def build(self, node: yaml.Node, path: Path, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise ConfigError(
                f"document expands to more than {MAX_NODES} nodes through anchors/aliases (a YAML bomb?)",
                where=str(self.mark(node)), fix="remove the alias chain; ductile does not expand it",
            )
        if depth > MAX_DEPTH:
            raise ConfigError(f"nesting deeper than {MAX_DEPTH} levels", where=str(self.mark(node)),
                              fix="flatten the structure")
        self.marks.setdefault(path, self.mark(node))
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP:
                raise self.bad_tag(node)
            return self.mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ:
                raise self.bad_tag(node)
            return [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        if node.tag not in _PLAIN_TAGS:
            raise self.bad_tag(node)
        if node.tag == "tag:yaml.org,2002:timestamp":
            return node.value
        try:
            value = self.scalar.construct_object(node)
        except (yaml.YAMLError, ValueError) as err:
            raise ConfigError(f"bad scalar {node.value!r}: {err}", where=str(self.mark(node)),
                              fix="quote it to make it a string") from None
        if isinstance(value, str) and self.interpolate is not None:
            return self.interpolate(value, self.mark(node), path)
        return value

    def bad_tag(self, node: yaml.Node) -> ConfigError:
        return ConfigError(f"YAML tag {node.tag} is not allowed", where=str(self.mark(node)),
                           fix="remove the tag; only plain strings, numbers, booleans, lists and mappings are accepted")

    def mapping(self, node: yaml.MappingNode, path: Path, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                for source in (value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]):
                    inherited = self.build(source, path, depth + 1)
                    if not isinstance(inherited, dict):
                        raise ConfigError("a '<<' merge must name a mapping", where=str(self.mark(value_node)),
                                          fix="merge only anchors of mappings")
                    for k, v in inherited.items():
                        merged.setdefault(k, v)
                continue
            # keys are always text: YAML 1.1 would turn `on:` (pipelines) into True
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError("mapping keys must be plain text", where=str(self.mark(key_node)),
                                  fix="use a plain word as the key")
            key = key_node.value
            if key in out:
                raise ConfigError(f"duplicate key '{key}' (first at line {self.marks[path + (key,)].line})",
                                  where=str(self.mark(key_node)), fix="keep one of them")
            self.marks[path + (key,)] = self.mark(key_node)
            out[key] = self.build(value_node, path + (key,), depth + 1)
        for k, v in merged.items():
            out.setdefault(k, v)
        return out


_ENV = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{[^}]*\}?")


def interpolate_env(text: str, env: dict[str, str], where: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; ``$$`` is a literal ``$``; unset -> error."""
    if "$" not in text:
        return text

    def sub(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        if name is None:
            raise ConfigError(f"malformed variable reference {token!r}", where=where,
                              fix="write ${NAME} or ${NAME:-default}; write $$ for a literal $")
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"environment variable {name} is not set (referenced as ${{{name}}})", where=where,
                          fix=f"export {name}=... before starting ductile, or write ${{{name}:-default}}")

    return _ENV.sub(sub, text)
