"""What a confined plugin may reach, as a Landlock ruleset decided from plain data
(SPEC §5.10). Pure: the edge (``landlock_linux.py``) opens the paths and applies it.

uid separation hides what is private to other uids; it does not hide what is
world-readable: ``/etc/passwd``, other users' 0755 homes, other plugins' code, ``/proc``,
the network. Landlock lets an unprivileged process restrict itself (and its children)
to an allowlist, and the gateway applies one per job, after the drop and before the
plugin's first instruction.

The default allowlist (read = read files, list directories, execute):

  read   the plugin's own directory; its #! interpreter's prefix (``/usr`` for
         ``/usr/bin/python3``) and, for a venv, the venv's root; ``service.plugin_path``;
         SYSTEM_READ below (libraries, the dynamic loader's cache, TLS roots, time zones,
         name resolution)
  write  its state_dir (everything: create, remove, rename; its private TMPDIR is inside);
         /dev/null, /dev/zero, /dev/full
  read   /dev/urandom, /dev/random

and nothing else: not ``/proc`` (a plugin that needs it adds it), not ``/etc/passwd``, not
``/home``, not ``/tmp``, not other plugins' directories. ``plugins.<n>.filesystem`` adds
``read``/``write`` paths (absolute, existing, never reaching the secret surface: that is a
config error); ``filesystem: unrestricted`` opts out, logged at WARN.

Network (ABI >= 4): only when ``plugins.<n>.network`` is set are TCP ``connect`` and
``bind`` limited to the listed ports; no ``network:`` key leaves the network alone. UDP
(DNS) is not covered by Landlock. Scoping (ABI >= 6): a job can signal only its own
processes and reach only its own abstract unix sockets; the gateway's kill helper,
started outside the job's domain, still can.

Best effort by ABI: what the kernel does not know is not enforced, and ``describe``
says so; ABI 0 (no Landlock) is a doctor warning, or a refusal under
``service.require_landlock``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ductile.findings import Finding

# filesystem access rights (ABI 1 unless noted)
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13        # ABI 2
TRUNCATE = 1 << 14     # ABI 3
IOCTL_DEV = 1 << 15    # ABI 5
# network (ABI 4) and scoping (ABI 6)
NET_BIND_TCP = 1 << 0
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

READ = EXECUTE | READ_FILE | READ_DIR
WRITE = (1 << 16) - 1
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # all a rule on a non-directory may hold
DEV_RW = READ_FILE | WRITE_FILE | TRUNCATE | IOCTL_DEV
DEV_R = READ_FILE | IOCTL_DEV

SYSTEM_READ = (
    "/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin",
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
    "/etc/localtime", "/etc/timezone",
    "/etc/ssl", "/etc/ca-certificates", "/etc/pki", "/etc/crypto-policies",
    "/etc/resolv.conf", "/etc/hosts", "/etc/host.conf", "/etc/nsswitch.conf", "/etc/gai.conf",
    "/etc/services", "/etc/protocols", "/etc/mime.types",
    "/etc/python3", *(f"/etc/python3.{minor}" for minor in range(8, 16)),  # Debian: sitecustomize lives here
)
DEVICES = (("/dev/null", DEV_RW), ("/dev/zero", DEV_RW), ("/dev/full", DEV_RW),
           ("/dev/urandom", DEV_R), ("/dev/random", DEV_R))


def enforced_kinds(abi: int) -> str:
    """What this ABI can enforce, for the posture line."""
    kinds = ["fs"] + (["tcp"] if abi >= 4 else []) + (["scope"] if abi >= 6 else [])
    return "+".join(kinds)


def fs_handled(abi: int) -> int:
    if abi <= 0:
        return 0
    return {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}.get(abi, (1 << 16) - 1)


def net_handled(abi: int) -> int:
    return NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0


def scoped(abi: int) -> int:
    return SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0


@dataclass(frozen=True)
class PathRule:
    path: str
    access: int
    why: str
    required: bool = False     # an operator's rule: must exist when applied (defaults are skipped if absent)


@dataclass(frozen=True)
class Ruleset:
    abi: int
    handled_fs: int
    handled_net: int
    scoped: int
    paths: tuple[PathRule, ...]
    connect: tuple[int, ...] = ()
    bind: tuple[int, ...] = ()

    def covers(self, path: str, access: int = READ_FILE) -> bool:
        """Would ``path`` be reachable with ``access`` (by its path, ignoring DAC)?"""
        p = posixpath.normpath(path)
        return any((p == r.path or p.startswith(r.path.rstrip("/") + "/")) and r.access & access == access
                   for r in self.paths)

    def describe(self) -> str:
        parts = [f"abi{self.abi}", "fs"]
        if self.handled_net:
            parts.append(f"net connect {list(self.connect)} bind {list(self.bind)}")
        if self.scoped:
            parts.append("scope signal+abstract-unix")
        return " ".join(parts)


@dataclass(frozen=True)
class PluginFacts:
    """What the edge resolved about one plugin, for its ruleset."""

    directory: str
    interpreter_prefix: str | None = None   # realpath of the #! interpreter, two levels up (/usr)
    venv_root: str | None = None            # the interpreter's venv (pyvenv.cfg beside bin/)


def build_ruleset(abi: int, plugin: PluginFacts, state_dir: str, plugin_path: Iterable[str],
                  filesystem: Any, network: Any, exists: Callable[[str], bool]) -> Ruleset | None:
    """The ruleset of one confined job; None when Landlock does not apply (no kernel
    support, or ``filesystem: unrestricted``). ``filesystem``/``network`` are the plugin's
    config values (a FilesystemConfig, "unrestricted" or None; a NetworkConfig or None)."""
    if abi <= 0 or filesystem == "unrestricted":
        return None
    rules: list[PathRule] = [PathRule(p, READ, "system") for p in SYSTEM_READ if exists(p)]
    rules += [PathRule(p, access, "device") for p, access in DEVICES if exists(p)]
    rules += [PathRule(p, READ, "service.plugin_path") for p in plugin_path if exists(p)]
    rules.append(PathRule(plugin.directory, READ, "the plugin's directory", required=True))
    for path, why in ((plugin.interpreter_prefix, "its interpreter"), (plugin.venv_root, "its interpreter's venv")):
        if path and exists(path):
            rules.append(PathRule(path, READ, why))
    rules.append(PathRule(state_dir, WRITE, "its state_dir (and TMPDIR)", required=True))
    if filesystem is not None:
        rules += [PathRule(posixpath.normpath(p), READ, "filesystem.read", required=True) for p in filesystem.read]
        rules += [PathRule(posixpath.normpath(p), WRITE, "filesystem.write", required=True) for p in filesystem.write]
    handled = fs_handled(abi)
    rules = [PathRule(r.path, r.access & handled, r.why, r.required) for r in rules]
    net = net_handled(abi) if network is not None else 0
    return Ruleset(abi, handled, net, scoped(abi), tuple(rules),
                   tuple(network.connect) if net else (), tuple(network.bind) if net else ())


def enforcement(abi: int, filesystem: Any, network: Any, confined: bool) -> dict[str, str]:
    """What Landlock enforces for one plugin, in words (doctor, explain, the posture line)."""
    if not confined:
        return {"landlock": "not applied: the plugin runs unconfined"}
    if abi <= 0:
        return {"landlock": "NOT ENFORCED: this kernel has no Landlock"}
    if filesystem == "unrestricted":
        return {"landlock": "NOT ENFORCED: filesystem: unrestricted (audited opt-out)"}
    out = {"landlock": f"ABI {abi}", "filesystem": "the default allowlist" + (" + plugins.<n>.filesystem" if filesystem else "")}
    if network is None:
        out["network"] = "not restricted (no network: key)"
    elif abi < 4:
        out["network"] = f"NOT ENFORCED: TCP rules need Landlock ABI 4, this kernel has {abi}"
    else:
        out["network"] = f"TCP connect {list(network.connect)}, bind {list(network.bind)}"
    out["scope"] = "signals and abstract unix sockets stay inside the job" if abi >= 6 else (
        f"NOT ENFORCED: scoping needs Landlock ABI 6, this kernel has {abi}")
    return out


def _inside_or_equal(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def rule_findings(plugins: Mapping[str, Any], secret_paths: Iterable[tuple[str, str]],
                  exists: Callable[[str], bool]) -> list[Finding]:
    """``plugins.<n>.filesystem`` rules as config errors: each must exist and must not reach
    the secret surface (contain it, or lie inside a secret directory). ``secret_paths``:
    (label, path). ``filesystem: unrestricted`` is a warning (the audited opt-out)."""
    out: list[Finding] = []
    secrets = [(label, posixpath.normpath(p)) for label, p in secret_paths]
    for name in sorted(plugins):
        fs = getattr(plugins[name], "filesystem", None)
        if fs is None:
            continue
        if fs == "unrestricted":
            out.append(Finding("warning", "landlock", f"plugins.{name}.filesystem",
                               f"plugin {name} runs without a Landlock allowlist (filesystem: unrestricted): it can read "
                               "every world-readable file on the host", "remove it and add the paths it needs to "
                               f"plugins.{name}.filesystem.read / .write"))
            continue
        for kind in ("read", "write"):
            for i, path in enumerate(getattr(fs, kind)):
                field = f"plugins.{name}.filesystem.{kind}[{i}]"
                p = posixpath.normpath(path)
                hits = [(label, s) for label, s in secrets if _inside_or_equal(s, p) or _inside_or_equal(p, s)]
                hit = max(hits, key=lambda h: len(h[1])) if hits else None  # the most specific: the age key, not its dir
                if hit is not None:
                    label, s = hit
                    out.append(Finding("error", "landlock", field,
                                       f"{p} would open the {label} {s} to plugin {name}: a filesystem rule must never "
                                       "reach the secret surface", "name a directory that holds only what the plugin "
                                       "needs, outside the config directory, the state database and the vault"))
                elif not exists(p):
                    out.append(Finding("error", "landlock", field, f"{p} does not exist",
                                       "create it first, or remove the rule"))
    return out


def config_paths(value: Any) -> list[str]:
    """Absolute paths among a plugin's ``config:`` values (recursively): what it will
    probably open."""
    out: list[str] = []
    if isinstance(value, str):
        if value.startswith("/") and len(value) > 1 and not any(c.isspace() for c in value) and "://" not in value:
            out.append(posixpath.normpath(value))
    elif isinstance(value, dict):
        for v in value.values():
            out += config_paths(v)
    elif isinstance(value, list):
        for v in value:
            out += config_paths(v)
    return out


def hint_findings(name: str, config: Any, ruleset: Ruleset) -> list[Finding]:
    """"folder_watch reads /srv/inbox: add it to plugins.folder_watch.filesystem.read" —
    so an operator porting a plugin sees the rule before a job fails."""
    out = []
    for path in sorted(set(config_paths(config))):
        if not ruleset.covers(path):
            out.append(Finding("warning", "landlock", f"plugins.{name}.config",
                               f"{name} reads {path} (from its config), outside its Landlock allowlist: add it to "
                               f"plugins.{name}.filesystem.read", f"plugins.{name}.filesystem: {{read: [{path}]}} "
                               "(or write: if it writes there)"))
    return out
