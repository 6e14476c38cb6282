"""The manual pages in man/: they lint clean, parse and render with the host's own tools,
and they cannot drift from the code without a test failing.

Drift checks walk what the program really is rather than a list kept here: the entry
points of the ``ductile.commands`` group (one page per noun), the loaded click commands
(every subcommand gets a subsection, every option, argument and choice is named in it),
the config model's dataclasses (every key path is a tagged entry of ductile.yaml(5) with
its default and bounds, and the example there loads), and the environment variables the
code reads (each documented under ENVIRONMENT somewhere).

``groff -ww -z`` exits 0 even when it warns, so the lint asserts an empty stderr.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import typing
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import click
import pytest
from conftest import REPO

from ductile.cli import ENTRY_POINT_GROUP, cli
from ductile.config.decode import alternatives, hints_of, is_optional, yaml_key
from ductile.config.model import Config
from ductile.config.units import format_duration

MAN = REPO / "man"
PAGES = sorted(p for p in MAN.iterdir() if re.fullmatch(r".+\.[1-8]", p.name)) if MAN.is_dir() else []
PAGE_IDS = [p.name for p in PAGES]
# Written on another branch; until it lands here, references to it are expected to dangle.
PENDING_PAGES: set[str] = set()


# ---- a small reader for the man(7) subset these pages use ----------------------------------

_FONT = re.compile(r"\\f(?:\[[^\]]*\]|\(..|.)")
_ESCAPES = [(r"\(em", "\u2014"), (r"\(dq", '"'), (r"\(aq", "'"), (r"\(bu", "\u2022"), (r"\-", "-"),
            (r"\&", ""), (r"\%", ""), (r"\ ", " "), (r"\e", "\\")]
_ALTERNATING = {"BR", "RB", "IR", "RI", "BI", "IB"}


def plain(text: str) -> str:
    """Roff text as a reader sees it: fonts dropped, the escapes these pages use resolved."""
    text = _FONT.sub("", text)
    for esc, rep in _ESCAPES:
        text = text.replace(esc, rep)
    return text


def macro_args(rest: str) -> list[str]:
    """Split macro arguments the way troff does: blanks separate, "..." groups, "" is a quote."""
    args: list[str] = []
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] == " ":
            i += 1
        if i >= n:
            break
        if rest[i] == '"':
            i += 1
            buf = []
            while i < n:
                if rest[i] == '"':
                    if i + 1 < n and rest[i + 1] == '"':
                        buf.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(rest[i])
                i += 1
            args.append("".join(buf))
        else:
            j = i
            while j < n and rest[j] != " ":
                j += 1
            args.append(rest[i:j])
            i = j
    return args


@dataclass(frozen=True)
class Line:
    macro: str | None  # None for a text line
    args: tuple[str, ...]
    text: str          # what the line shows, in plain text


def parse(source: str) -> list[Line]:
    out: list[Line] = []
    for raw in source.splitlines():
        if raw.startswith((".\\\"", "'\\\"")) or raw.strip() in (".", ""):
            continue
        if raw[:1] in (".", "'"):
            name, _, rest = raw[1:].partition(" ")
            args = tuple(macro_args(rest))
            sep = "" if name in _ALTERNATING else " "
            shown = sep.join(args) if name in _ALTERNATING | {"B", "I", "SH", "SS", "IP"} else ""
            if name == "IP":
                shown = args[0] if args else ""
            out.append(Line(name, args, plain(shown)))
        else:
            out.append(Line(None, (), plain(raw)))
    return out


def text_of(lines: list[Line]) -> str:
    return " ".join(" ".join(ln.text.split()) for ln in lines if ln.text.strip())


def split_by(lines: list[Line], macro: str) -> list[tuple[str, list[Line]]]:
    """(heading, lines under it) for each ``macro`` heading, in order."""
    out: list[tuple[str, list[Line]]] = []
    for ln in lines:
        if ln.macro == macro:
            out.append((" ".join(ln.text.split()), []))
        elif out:
            out[-1][1].append(ln)
    return out


def tp_items(lines: list[Line]) -> list[tuple[str, str]]:
    """(tag, body) of each .TP item; the body runs to the next .TP, .PP or heading."""
    items: list[tuple[str, list[Line]]] = []
    i = 0
    while i < len(lines):
        if lines[i].macro == "TP" and i + 1 < len(lines):
            items.append((" ".join(lines[i + 1].text.split()), []))
            i += 2
            continue
        if lines[i].macro in ("PP", "P", "LP", "SS", "SH"):
            items.append(("", []))
        elif items:
            items[-1][1].append(lines[i])
        i += 1
    return [(tag, text_of(body)) for tag, body in items if tag]


@dataclass(frozen=True)
class Page:
    path: Path
    lines: list[Line]

    def section(self, name: str) -> list[Line]:
        found = [body for head, body in split_by(self.lines, "SH") if head == name]
        assert found, f"{self.path.name} has no {name} section"
        return found[0]

    def has_section(self, name: str) -> bool:
        return any(head == name for head, _ in split_by(self.lines, "SH"))

    @property
    def text(self) -> str:
        return text_of(self.lines)


@cache
def page(name: str) -> Page:
    path = MAN / name
    assert path.is_file(), f"man/{name} is missing"
    return Page(path, parse(path.read_text(encoding="utf-8")))


def mentions(text: str, word: str) -> bool:
    """``word`` appears as a whole token (so --config does not match --config-dir)."""
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


# ---- the program as it is -------------------------------------------------------------------

def registered_nouns() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def noun_command(noun: str) -> click.Command:
    cmd = cli.get_command(click.Context(cli), noun)
    assert cmd is not None, f"noun {noun} does not load"
    return cmd


def leaves(cmd: click.Command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every runnable command under ``cmd`` with its path of subcommand names."""
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        out = []
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            assert sub is not None
            out += leaves(sub, path + (name,))
        return out
    return [(path, cmd)]


def groups(cmd: click.Command) -> list[click.Group]:
    if not isinstance(cmd, click.Group):
        return []
    ctx = click.Context(cmd)
    subs = [cmd.get_command(ctx, name) for name in cmd.list_commands(ctx)]
    return [cmd] + [g for sub in subs if sub is not None for g in groups(sub)]


def words_for(cmd: click.Command) -> list[str]:
    """What a page must name for ``cmd``: every option spelling, argument, and choice."""
    out: list[str] = []
    for p in cmd.params:
        if isinstance(p, click.Option):
            out += list(p.opts) + list(p.secondary_opts)
        elif isinstance(p, click.Argument):
            if not isinstance(p.type, click.Choice):
                out.append(p.metavar or (p.name or "").upper())
        if isinstance(p.type, click.Choice):
            out += [str(c) for c in p.type.choices]
    return out


def documented_nouns() -> list[str]:
    return [n for n in registered_nouns() if (MAN / f"ductile-{n}.1").exists()]


# ---- 1. the host's tools accept every page --------------------------------------------------

def need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} is not installed (apt-get install groff-base man-db)")
    return found


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, LC_ALL="C.UTF-8", **(env or {}))
    return subprocess.run(list(argv), capture_output=True, text=True, env=full, timeout=60)


def test_there_are_pages() -> None:
    names = set(PAGE_IDS)
    assert {"ductile.1", "ductile.yaml.5"} <= names, names


@pytest.mark.needs_tool("groff")
@pytest.mark.parametrize("path", PAGES, ids=PAGE_IDS)
def test_page_lints_clean(path: Path) -> None:
    proc = run(need("groff"), "-man", "-Tutf8", "-ww", "-z", str(path))
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr


@pytest.mark.needs_tool("lexgrog")
@pytest.mark.parametrize("path", PAGES, ids=PAGE_IDS)
def test_lexgrog_parses_name(path: Path) -> None:
    proc = run(need("lexgrog"), str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    name = path.name.rsplit(".", 1)[0]
    m = re.fullmatch(rf'{re.escape(str(path))}: "{re.escape(name)} - (.+)"', proc.stdout.strip())
    assert m, f"lexgrog read: {proc.stdout!r}"


@pytest.mark.needs_tool("man")
@pytest.mark.parametrize("path", PAGES, ids=PAGE_IDS)
def test_man_renders(path: Path) -> None:
    proc = run(need("man"), "-l", str(path), env={"MANPAGER": "cat", "MANWIDTH": "80"})
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert "NAME" in proc.stdout and "SEE ALSO" in proc.stdout


@pytest.mark.needs_tool("man")
@pytest.mark.parametrize("path", PAGES, ids=PAGE_IDS)
def test_man_does_not_hyphenate(path: Path) -> None:
    """A hyphenated line end splits option and page names with U+2010, which does not paste
    back into a shell. .nh after .TH turns it off (.EE turns it back on: use .nf/.fi)."""
    proc = run(need("man"), "-l", str(path), env={"MANPAGER": "cat", "MANWIDTH": "80"})
    split = [ln.strip() for ln in proc.stdout.splitlines() if "\u2010" in ln]
    assert not split, f"{path.name} hyphenates (add .nh after .TH): {split[:3]}"


@pytest.mark.parametrize("path", PAGES, ids=PAGE_IDS)
def test_title_and_name_match_the_file(path: Path) -> None:
    lines = page(path.name).lines
    stem, section = path.name.rsplit(".", 1)
    th = next(ln for ln in lines if ln.macro == "TH")
    assert plain(th.args[0]) == stem.upper() and th.args[1] == section, th.args
    name = text_of(page(path.name).section("NAME"))
    assert name.startswith(f"{stem} - "), name


# ---- 2. one page per noun, and ductile(1) lists them ---------------------------------------

def test_every_registered_noun_has_a_page() -> None:
    # serve is not registered on this branch; its branch carries the entry point and
    # man/ductile-serve.1 together, so no noun needs to be let off
    missing = [n for n in registered_nouns() if not (MAN / f"ductile-{n}.1").exists()]
    assert not missing, f"no man/ductile-<noun>.1 for: {missing}"


def test_every_noun_page_is_a_registered_noun() -> None:
    nouns = set(registered_nouns())
    stray = [p.name for p in MAN.glob("ductile-*.1") if p.name[len("ductile-"):-2] not in nouns]
    assert not stray, f"pages for nouns that are not in the {ENTRY_POINT_GROUP} group: {stray}"


def test_ductile1_lists_every_noun_and_nothing_else() -> None:
    items = dict(tp_items(page("ductile.1").section("COMMANDS")))
    nouns = registered_nouns()
    assert sorted(items) == nouns, \
        f"COMMANDS of ductile(1) lists {sorted(items)}; registered: {nouns} (one .TP entry per noun)"
    for noun in documented_nouns():
        assert f"ductile-{noun}(1)" in items[noun], f"ductile(1) does not point {noun} at ductile-{noun}(1)"


def test_ductile1_documents_the_global_options() -> None:
    options = text_of(page("ductile.1").section("OPTIONS"))
    ctx = click.Context(cli)
    names = [o for p in cli.params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)]
    names += cli.get_help_option_names(ctx)
    assert "--debug" in names and "--version" in names
    for name in names:
        assert mentions(options, name), f"{name} missing from OPTIONS of ductile(1)"


def test_see_also_names_only_pages_that_exist() -> None:
    existing = {f"{p.name.rsplit('.', 1)[0]}({p.name.rsplit('.', 1)[1]})" for p in PAGES}
    for p in PAGES:
        for ref in re.findall(r"\bductile(?:-[a-z]+|\.yaml)?\(\d\)", page(p.name).text):
            assert ref in existing | PENDING_PAGES, f"{p.name} refers to {ref}, which is not in man/"
    see_also = text_of(page("ductile.1").section("SEE ALSO"))
    for ref in sorted((existing - {"ductile(1)"}) | PENDING_PAGES):
        assert ref in see_also, f"SEE ALSO of ductile(1) lacks {ref}"


def test_environment_read_by_the_code_is_documented() -> None:
    read = re.compile(r"""(?:envvar=|environ\.get\(|environ\[|env\.get\(|env\[|getenv\()\s*["']"""
                      r"""(DUCTILE_[A-Z0-9_]+|NO_COLOR)["']""")
    names: set[str] = set()
    for src in [*(REPO / "ductile").rglob("*.py"), *(REPO / "commands").rglob("*.py")]:
        names |= set(read.findall(src.read_text(encoding="utf-8")))
    assert {"DUCTILE_CONFIG_DIR", "DUCTILE_DEBUG", "NO_COLOR"} <= names, names
    documented = {tag for p in PAGES if page(p.name).has_section("ENVIRONMENT")
                  for tag, _ in tp_items(page(p.name).section("ENVIRONMENT"))}
    assert not names - documented, \
        f"read by the code but a .TP entry under no page's ENVIRONMENT section: {sorted(names - documented)}"


# ---- 3. every subcommand, option, argument and choice is in its noun's page ----------------

@pytest.mark.parametrize("noun", documented_nouns())
def test_every_subcommand_has_its_subsection(noun: str) -> None:
    pg = page(f"ductile-{noun}.1")
    cmd = noun_command(noun)
    synopsis = text_of(pg.section("SYNOPSIS"))
    paths = [" ".join(path) for path, _ in leaves(cmd)]
    for path in paths:
        assert f"ductile {noun} {path}".strip() in synopsis, f"SYNOPSIS of ductile-{noun}(1) lacks `{path}`"
    if not isinstance(cmd, click.Group):
        return
    subsections = dict(split_by(pg.section("COMMANDS"), "SS"))
    for path in paths:
        assert path in subsections, f"ductile-{noun}(1) has no `.SS {path}` under COMMANDS"
        assert f"ductile {noun} {path}" in text_of(subsections[path]), f".SS {path} shows no synopsis line"
    stray = sorted(set(subsections) - set(paths))
    assert not stray, f"ductile-{noun}(1) documents subcommands that do not exist: {stray}"


@pytest.mark.parametrize("noun", documented_nouns())
def test_every_option_argument_and_choice_is_in_its_section(noun: str) -> None:
    pg = page(f"ductile-{noun}.1")
    cmd = noun_command(noun)
    for grp in groups(cmd):  # options on a group (none today) belong in SYNOPSIS or OPTIONS
        for word in words_for(grp):
            assert mentions(pg.text, word), f"ductile-{noun}(1) never mentions {word}"
    if isinstance(cmd, click.Group):
        subsections = dict(split_by(pg.section("COMMANDS"), "SS"))
        where = {" ".join(path): (text_of(subsections.get(" ".join(path), [])), leaf) for path, leaf in leaves(cmd)}
    else:
        where = {"": (text_of(pg.section("SYNOPSIS")) + " " + text_of(pg.section("OPTIONS")), cmd)}
    for path, (text, leaf) in where.items():
        for word in words_for(leaf):
            assert mentions(text, word), f"ductile {noun} {path}: {word} is not in its section of the page"


# ---- 4. ductile.yaml(5) documents every key of the model ------------------------------------

@dataclass(frozen=True)
class Key:
    path: str
    hint: Any
    field: dataclasses.Field[Any]
    owner: type


def model_keys(cls: type = Config, prefix: str = "") -> list[Key]:
    """Every key path of the config: ``accounts.name.uid``, ``pipelines[].steps[].uses``."""
    out: list[Key] = []
    for f in dataclasses.fields(cls):
        hint = is_optional(hints_of(cls)[f.name])[1]
        path = f"{prefix}{yaml_key(f)}"
        out.append(Key(path, hint, f, cls))
        members = [a for a in alternatives(hint) if dataclasses.is_dataclass(a)] if len(alternatives(hint)) > 1 else []
        for member in members:  # `filesystem: unrestricted` or a mapping: document the mapping's keys
            out += model_keys(member, path + ".")
        if dataclasses.is_dataclass(hint):
            out += model_keys(hint, path + ".")  # type: ignore[arg-type]
        elif get_origin(hint) is tuple and dataclasses.is_dataclass(get_args(hint)[0]):
            out += model_keys(get_args(hint)[0], path + "[].")
        elif get_origin(hint) is dict and dataclasses.is_dataclass(get_args(hint)[1]):
            out += model_keys(get_args(hint)[1], path + ".name.")
    return out


def _size(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def shown(value: Any, kind: str | None) -> str:
    """A value spelled the way the page writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    if kind == "duration":
        return format_duration(value)
    if kind == "size":
        return _size(value)
    return str(value)


def yaml5_keys() -> dict[str, str]:
    return dict(tp_items(page("ductile.yaml.5").section("KEYS")))


def test_every_config_key_is_an_entry_of_ductile_yaml5() -> None:
    entries = yaml5_keys()
    paths = [k.path for k in model_keys()]
    assert {"service", "accounts", "plugins", "accounts.name.uid", "pipelines[].steps[].uses"} <= set(paths)
    missing = [p for p in paths if p not in entries]
    assert not missing, f"ductile.yaml(5) has no .TP entry for: {missing}"
    stray = sorted(set(entries) - set(paths))
    assert not stray, f"ductile.yaml(5) documents keys the model does not have: {stray}"


@pytest.mark.parametrize("key", model_keys(), ids=lambda k: k.path)
def test_each_config_entry_states_its_default_and_bounds(key: Key) -> None:
    body = yaml5_keys().get(key.path)
    if body is None:
        pytest.fail(f"no entry for {key.path}")  # reported in full by the test above
    meta, f = key.field.metadata, key.field
    kind = meta.get("kind")

    def says(word: str) -> bool:
        return re.search(rf"(?<![\w.]){re.escape(word)}(?![\w])", body) is not None

    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        assert "required" in body, f"{key.path} is required; its entry does not say so"
    elif not dataclasses.is_dataclass(key.hint):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
        if default is not None:
            want = shown(default, kind)
            assert re.search(rf"Default: {re.escape(want)}(?=[\s.,;)]|$)", body), \
                f"{key.path}: entry lacks `Default: {want}`: {body!r}"
    for bound in ("minimum", "maximum"):
        if meta.get(bound) is not None:
            want = shown(meta[bound], kind)
            assert says(want), f"{key.path}: entry does not give its {bound} {want}: {body!r}"
    if get_origin(key.hint) is Literal:
        for choice in get_args(key.hint):
            assert says(str(choice)), f"{key.path}: entry does not list {choice}"


def test_the_ductile_yaml5_example_loads_clean(tmp_path: Path) -> None:
    from ductile.config import load_config

    lines = page("ductile.yaml.5").section("EXAMPLE")
    macros = [ln.macro for ln in lines]
    start, end = macros.index("nf"), macros.index("fi")
    example = "\n".join(ln.text for ln in lines[start + 1:end] if ln.macro is None)
    assert "accounts:" in example
    (tmp_path / "config.yaml").write_text(example + "\n", encoding="utf-8")
    loaded = load_config(str(tmp_path), env={"HOME": str(tmp_path)}, gateway_uid=999)
    assert not loaded.findings, [f.message for f in loaded.findings]
    cfg = loaded.config
    assert set(cfg.accounts) >= {"default", "untrusted"} and cfg.plugins and cfg.pipelines and cfg.webhooks
    assert cfg.api.listen == "127.0.0.1:8080"  # ${DUCTILE_LISTEN:-...} fell back to its default


# ---- 5. the checks above can fail -----------------------------------------------------------

def test_the_reader_sees_what_a_reader_sees() -> None:
    lines = parse('.TH X 1\n.SH COMMANDS\n.SS "principal add"\n.B ductile vault principal add\n'
                  '.RB [ \\-c | \\-\\-config\n.IR PATH ]\n.TP\n.BI accounts. name .uid\nInteger; required.\n'
                  '.PP\nafter\n')
    subs = dict(split_by(dict(split_by(lines, "SH"))["COMMANDS"], "SS"))
    assert list(subs) == ["principal add"]
    text = text_of(subs["principal add"])
    assert "ductile vault principal add [-c|--config PATH]" in text
    assert mentions(text, "--config") and not mentions(text, "--config-dir") and not mentions(text, "--json")
    assert tp_items(lines) == [("accounts.name.uid", "Integer; required.")]


def test_a_missing_option_or_key_would_be_caught() -> None:
    @click.command()
    @click.option("--frobnicate", "-F", is_flag=True)
    @click.argument("target", type=click.Choice(["alpha", "beta"]))
    def fake(frobnicate: bool, target: str) -> None:
        """A command that no page documents."""

    assert words_for(fake) == ["--frobnicate", "-F", "alpha", "beta"]
    assert not mentions(page("ductile-plugin.1").text, "--frobnicate")

    @dataclass(frozen=True)
    class Extra:
        knob: int = dataclasses.field(default=3, metadata={"doc": "x", "minimum": 1, "maximum": 9})

    keys = model_keys(Extra)
    assert [k.path for k in keys] == ["knob"] and "knob" not in yaml5_keys()
    assert shown(4 * 1024 * 1024, "size") == "4MiB" and shown(600.0, "duration") == "10m"
    assert shown(("/opt/ductile/plugins",), None) == "[/opt/ductile/plugins]"


def test_model_walk_reaches_every_dataclass() -> None:
    """Found independently of model_keys: every dataclass reachable from Config's hints."""
    seen: set[type] = set()

    def visit(cls: type) -> None:
        seen.add(cls)
        for hint in typing.get_type_hints(cls).values():
            for inner in (is_optional(hint)[1], *get_args(is_optional(hint)[1])):
                if dataclasses.is_dataclass(inner) and inner not in seen:
                    visit(inner)  # type: ignore[arg-type]

    visit(Config)
    walked = {k.owner for k in model_keys()}
    assert walked == seen, sorted(c.__name__ for c in seen ^ walked)
    assert len(seen) > 10
