"""Parse and validate one plugin ``manifest.yaml`` (SPEC §4).

Two rules pull against each other here and both hold: a manifest is validated strictly
where ductile *uses* a field (name, protocol, entrypoint, commands, config_keys,
concurrency_safe), and a manifest written for upstream ductile loads unchanged (its
``manifest_spec``, ``manifest_version``, ``version``, per-command ``description``,
``idempotent``, ``retry_safe``, ``input_schema``, ``output_schema``, ``values``,
``fact_outputs`` and ``stopwatch`` are accepted and carried, never judged beyond what
upstream itself refuses). An unknown key is a warning, not a refusal, because upstream
ignores unknown keys too.

The file is read with the config's hardened YAML reader (size cap, alias-bomb guard,
duplicate keys refused, file:line for every key), so a manifest cannot be a weapon either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ductile.config.model import COMMAND_NAME, COMMAND_NAME_HINT, NAME, NAME_HINT
from ductile.config.yamlsrc import Document, Mark, Wording, read_yaml
from ductile.config.yamlsrc import Path as KeyPath
from ductile.errors import ConfigError, PluginError
from ductile.findings import Finding

MANIFEST_NAME = "manifest.yaml"
MANIFEST_SPEC = "ductile.plugin"
MANIFEST_VERSION = 1
PROTOCOL_VERSION = 2

CommandType = Literal["read", "write"]
COMMAND_TYPES: tuple[CommandType, ...] = ("read", "write")

_NAME = re.compile(NAME)
_COMMAND_NAME = re.compile(COMMAND_NAME)

TOP_LEVEL_KEYS = frozenset({
    "name", "protocol", "entrypoint", "commands", "description", "config_keys", "concurrency_safe",
    # upstream ductile's manifest format, accepted so its plugins load unchanged
    "manifest_spec", "manifest_version", "version", "fact_outputs", "stopwatch",
})
COMMAND_KEYS = frozenset({
    "name", "type", "description", "idempotent", "retry_safe", "input_schema", "output_schema", "values",
})
CONFIG_KEYS_KEYS = frozenset({"required", "optional"})

MANIFEST_WORDING = Wording(
    noun="manifest",
    fill="write name, protocol: 2, entrypoint and commands (see examples/plugins/echo/manifest.yaml)",
    shrink="a manifest describes a plugin in a few lines; keep data in the plugin's own files",
    top="start the manifest with keys such as name:, protocol: 2, entrypoint:, commands:",
)


@dataclass(frozen=True)
class CommandSpec:
    """One command a plugin answers. ``type`` is the API's read/write permission hint."""

    name: str
    type: CommandType
    description: str = ""
    idempotent: bool | None = None
    retry_safe: bool | None = None
    # carried for upstream compatibility (API docs, payload naming); not interpreted yet
    input_schema: Any = field(default=None, hash=False)
    output_schema: Any = field(default=None, hash=False)
    values: Any = field(default=None, hash=False)


COMPATIBILITY_VIEWS = ("", "mirror_object")


@dataclass(frozen=True)
class FactOutput:
    """Upstream's ``fact_outputs`` rule: when ``command`` succeeds, its ``state_updates`` are a
    snapshot of kind ``fact_type``; with ``compatibility_view: mirror_object`` the snapshot
    *replaces* the plugin's stored state instead of being merged into it."""

    command: str
    fact_type: str
    compatibility_view: str = ""
    source: str = "state_updates"

    @property
    def mirrors(self) -> bool:
        return self.compatibility_view == "mirror_object"


@dataclass(frozen=True)
class Manifest:
    """What a plugin says about itself. It never grants anything: the account a plugin
    runs as comes only from the operator's config (SPEC §5.3)."""

    name: str
    protocol: int
    entrypoint: str  # as written: relative to the plugin directory
    commands: tuple[CommandSpec, ...]
    description: str = ""
    version: str = ""
    config_keys_required: tuple[str, ...] = ()
    config_keys_optional: tuple[str, ...] = ()
    concurrency_safe: bool = True
    manifest_spec: str | None = None
    manifest_version: int | None = None
    fact_outputs: tuple[FactOutput, ...] = ()
    # upstream feature ductile does not implement; kept so nothing is silently lost
    stopwatch: Any = field(default=None, hash=False)

    @property
    def command_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.commands)

    def command(self, name: str) -> CommandSpec | None:
        return next((c for c in self.commands if c.name == name), None)

    def state_mode(self, command: str) -> str:
        """How a successful ``command``'s ``state_updates`` reach the stored state:
        ``replace`` when a fact_outputs rule for it mirrors the object, else ``merge``."""
        return "replace" if any(f.command == command and f.mirrors for f in self.fact_outputs) else "merge"

    @property
    def config_keys(self) -> tuple[str, ...]:
        """Every declared config key, required first."""
        return self.config_keys_required + self.config_keys_optional


def parse_manifest(path: str) -> tuple[Manifest, list[Finding]]:
    """Read and validate ``path``. Fatal problems raise one ``PluginError`` naming
    file:line, the field and the fix; tolerable ones come back as warning findings."""
    try:
        doc = read_yaml(path, wording=MANIFEST_WORDING)
    except ConfigError as err:
        raise PluginError(err.message, where=err.where, fix=err.fix) from None
    return _Parser(path, doc).parse()


def entrypoint_problem(entrypoint: str) -> tuple[str, str] | None:
    """Why a written entrypoint can never be trusted, as (message after "entrypoint", fix), or None.

    Shared by the manifest parser and the trust rules so both refuse the same things."""
    if not entrypoint:
        return "is empty", "name the executable, relative to the plugin directory, e.g. entrypoint: run.py"
    if "\x00" in entrypoint:
        return "contains a NUL byte", "name the executable by a plain relative path"
    if entrypoint.startswith("/"):
        return (f"{entrypoint!r} is absolute",
                "make it relative to the plugin directory (e.g. entrypoint: run.py) and keep the file inside it")
    if ".." in entrypoint.split("/"):
        return (f"{entrypoint!r} has a '..' component",
                "keep the executable inside the plugin directory and name it without '..'")
    return None


class _Parser:
    """One pass over one document; the first fatal problem raises, warnings accumulate."""

    def __init__(self, path: str, doc: Document) -> None:
        self.path = path
        self.data: dict[str, Any] = doc.data
        self.marks = doc.marks
        self.findings: list[Finding] = []

    # -- locating and refusing ---------------------------------------------------------

    def where(self, key_path: KeyPath) -> str:
        probe = key_path
        while probe:
            if probe in self.marks:
                return str(self.marks[probe])
            probe = probe[:-1]
        return str(self.marks.get((), Mark(self.path, 1)))

    def fail(self, key_path: KeyPath, message: str, fix: str) -> PluginError:
        return PluginError(f"{_dotted(key_path)} {message}", where=self.where(key_path), fix=fix)

    def warn(self, key_path: KeyPath, message: str, fix: str) -> None:
        self.findings.append(Finding("warning", "plugin", _dotted(key_path), message, fix, self.where(key_path)))

    # -- typed readers -------------------------------------------------------------------

    def text(self, key_path: KeyPath, value: Any, *, required: bool = False) -> str:
        """A text field. Numbers are accepted as their text (upstream's YAML decoder does
        the same for string fields); anything else is refused with a hint to quote it."""
        if value is None:
            if required:
                raise self.fail(key_path, "is required", f"add {_dotted(key_path)}: to the manifest")
            return ""
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise self.fail(key_path, f"must be text, got {_kind(value)}", "write it as a quoted string")

    def flag(self, key_path: KeyPath, value: Any) -> bool | None:
        if value is None or isinstance(value, bool):
            return value
        raise self.fail(key_path, f"must be true or false, got {_kind(value)} {value!r}",
                        f"write {_dotted(key_path)}: true or {_dotted(key_path)}: false")

    def names(self, key_path: KeyPath, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail(key_path, f"must be a list of key names, got {_kind(value)}", "write [key_a, key_b]")
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise self.fail(key_path + (i,), f"must be a key name, got {_kind(item)} {item!r}",
                                "list plain key names")
            out.append(item.strip())
        return tuple(out)

    # -- the document ------------------------------------------------------------------

    def parse(self) -> tuple[Manifest, list[Finding]]:
        d = self.data
        for key in d:
            if key not in TOP_LEVEL_KEYS:
                self.warn((key,), f"unknown manifest key '{key}' is ignored",
                          f"remove it or fix its spelling (known keys: {', '.join(sorted(TOP_LEVEL_KEYS))})")
        manifest_spec = self.manifest_spec(d.get("manifest_spec"))
        manifest_version = self.manifest_version(d.get("manifest_version"))
        name = self.text(("name",), d.get("name"), required=True).strip()
        if not _NAME.match(name):
            raise self.fail(("name",), f"{name!r} is not a valid plugin name: a name is {NAME_HINT}",
                            f"rename it: {NAME_HINT}")
        protocol = self.protocol(d.get("protocol"))
        entrypoint = self.text(("entrypoint",), d.get("entrypoint"), required=True)
        problem = entrypoint_problem(entrypoint)
        if problem:
            raise self.fail(("entrypoint",), *problem)
        commands = self.commands(d.get("commands"))
        required, optional = self.config_keys(d.get("config_keys"))
        concurrency_safe = self.flag(("concurrency_safe",), d.get("concurrency_safe"))
        version = d.get("version")
        if isinstance(version, float):
            self.warn(("version",), f"version {version!r} is written as a number, so trailing zeros are lost",
                      f"quote it: version: \"{version}\"")
        manifest = Manifest(
            name=name,
            protocol=protocol,
            entrypoint=entrypoint,
            commands=commands,
            description=self.text(("description",), d.get("description")),
            version=self.text(("version",), version),
            config_keys_required=required,
            config_keys_optional=optional,
            concurrency_safe=True if concurrency_safe is None else concurrency_safe,
            manifest_spec=manifest_spec,
            manifest_version=manifest_version,
            fact_outputs=self.fact_outputs(d.get("fact_outputs"), commands),
            stopwatch=d.get("stopwatch"),
        )
        return manifest, self.findings

    def manifest_spec(self, value: Any) -> str | None:
        if value is None:
            return None
        if value != MANIFEST_SPEC:
            raise self.fail(("manifest_spec",), f"must be {MANIFEST_SPEC}, got {value!r}",
                            f"write manifest_spec: {MANIFEST_SPEC} or remove the line")
        return MANIFEST_SPEC

    def manifest_version(self, value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or value != MANIFEST_VERSION:
            raise self.fail(("manifest_version",), f"must be {MANIFEST_VERSION}, got {value!r}",
                            f"write manifest_version: {MANIFEST_VERSION} or remove the line")
        return MANIFEST_VERSION

    def protocol(self, value: Any) -> int:
        if value is None:
            raise self.fail(("protocol",), "is required", f"add protocol: {PROTOCOL_VERSION}")
        if isinstance(value, bool) or not isinstance(value, int) or value != PROTOCOL_VERSION:
            raise self.fail(("protocol",), f"must be {PROTOCOL_VERSION} (the only protocol this gateway speaks), "
                            f"got {value!r}", f"port the plugin to protocol v{PROTOCOL_VERSION} and write "
                            f"protocol: {PROTOCOL_VERSION}")
        return PROTOCOL_VERSION

    def commands(self, value: Any) -> tuple[CommandSpec, ...]:
        key: KeyPath = ("commands",)
        example = "commands: [{name: poll, type: read}]"
        if value is None:
            raise self.fail(key, "is required", f"declare at least one command, e.g. {example}")
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list of {{name, type}} entries, got {_kind(value)}", f"write {example}")
        if not value:
            raise self.fail(key, "is an empty list", f"declare at least one command, e.g. {example}")
        out: list[CommandSpec] = []
        first_at: dict[str, str] = {}
        for i, item in enumerate(value):
            spec = self.command(key + (i,), item)
            if spec.name in first_at:
                raise self.fail(key + (i, "name"), f"repeats command '{spec.name}' (first declared on line {first_at[spec.name]})",
                                "keep one declaration per command name")
            first_at[spec.name] = self.where(key + (i, "name")).rsplit(":", 1)[-1]
            out.append(spec)
        return tuple(out)

    def command(self, key: KeyPath, item: Any) -> CommandSpec:
        if not isinstance(item, dict):
            raise self.fail(key, f"must be a mapping with name and type, got {_kind(item)}",
                            "write {name: poll, type: read}")
        for k in item:
            if k not in COMMAND_KEYS:
                self.warn(key + (k,), f"unknown command key '{k}' is ignored",
                          f"remove it or fix its spelling (known keys: {', '.join(sorted(COMMAND_KEYS))})")
        name = self.text(key + ("name",), item.get("name"), required=True).strip()
        if not _COMMAND_NAME.match(name):
            raise self.fail(key + ("name",), f"{name!r} is not a valid command name: a command name is "
                            f"{COMMAND_NAME_HINT}", f"rename it: {COMMAND_NAME_HINT}")
        ctype = item.get("type")
        if ctype is None:
            raise self.fail(key + ("type",), f"is required (command '{name}')",
                            "add type: read (no side effects) or type: write")
        if ctype not in COMMAND_TYPES:
            raise self.fail(key + ("type",), f"must be read or write, got {ctype!r} (command '{name}')",
                            "write type: read (no side effects) or type: write")
        return CommandSpec(
            name=name,
            type=ctype,
            description=self.text(key + ("description",), item.get("description")),
            idempotent=self.flag(key + ("idempotent",), item.get("idempotent")),
            retry_safe=self.flag(key + ("retry_safe",), item.get("retry_safe")),
            input_schema=item.get("input_schema"),
            output_schema=item.get("output_schema"),
            values=item.get("values"),
        )

    def fact_outputs(self, value: Any, commands: tuple[CommandSpec, ...]) -> tuple[FactOutput, ...]:
        """Upstream's rules, refused where upstream refuses them (undeclared command, a source
        other than state_updates, no fact_type, an unknown compatibility_view)."""
        key: KeyPath = ("fact_outputs",)
        example = "fact_outputs: [{when: {command: poll}, from: state_updates, fact_type: x.snapshot}]"
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list of rules, got {_kind(value)}", f"write {example}")
        declared = {c.name for c in commands}
        out: list[FactOutput] = []
        for i, item in enumerate(value):
            at = key + (i,)
            if not isinstance(item, dict):
                raise self.fail(at, f"must be a mapping, got {_kind(item)}", f"write {example}")
            when = item.get("when")
            command = when.get("command") if isinstance(when, dict) else None
            if not isinstance(command, str) or command not in declared:
                raise self.fail(at + ("when",), f"must name a declared command as when.command, got {command!r}",
                                f"write when: {{command: <one of {', '.join(sorted(declared))}>}}")
            if item.get("from") != "state_updates":
                raise self.fail(at + ("from",), f"must be state_updates, got {item.get('from')!r}",
                                "write from: state_updates")
            fact_type = item.get("fact_type")
            if not isinstance(fact_type, str) or not fact_type.strip():
                raise self.fail(at + ("fact_type",), "is required (a name such as myplugin.snapshot)",
                                "add fact_type: <plugin>.snapshot")
            view = item.get("compatibility_view") or ""
            if view not in COMPATIBILITY_VIEWS:
                raise self.fail(at + ("compatibility_view",), f"must be mirror_object or empty, got {view!r}",
                                "write compatibility_view: mirror_object or leave it out")
            out.append(FactOutput(command, fact_type.strip(), view))
        return tuple(out)

    def config_keys(self, value: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Either a plain list (every key optional) or upstream's {required, optional}."""
        key: KeyPath = ("config_keys",)
        if value is None:
            return (), ()
        if isinstance(value, list):
            return (), self.names(key, value)
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a list of key names or {{required: [...], optional: [...]}}, "
                            f"got {_kind(value)}", "write config_keys: [a, b] or config_keys: {required: [a]}")
        for k in value:
            if k not in CONFIG_KEYS_KEYS:
                self.warn(key + (k,), f"unknown config_keys entry '{k}' is ignored", "use required: or optional:")
        required = self.names(key + ("required",), value.get("required"))
        optional = self.names(key + ("optional",), value.get("optional"))
        both = sorted(set(required) & set(optional))
        if both:
            self.warn(key, f"config key(s) {', '.join(both)} are listed as both required and optional",
                      "list each key once")
            optional = tuple(k for k in optional if k not in both)
        return required, optional


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {bool: "a boolean", int: "a number", float: "a number", str: "text", list: "a list",
            dict: "a mapping"}.get(type(value), type(value).__name__)
