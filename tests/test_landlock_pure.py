"""The Landlock ruleset as data: what the default allowlist holds, what each ABI can
enforce, which filesystem rules are refused, and the hints doctor gives."""

from __future__ import annotations

import pytest

from ductile.config.model import FilesystemConfig, NetworkConfig
from ductile.privsep import landlock as ll

FACTS = ll.PluginFacts("/opt/p/echo", "/usr", "/opt/venvs/echo")


def build(abi: int = 7, fs: object = None, net: object = None, exists=lambda p: True):  # type: ignore[no-untyped-def]
    return ll.build_ruleset(abi, FACTS, "/var/lib/d/a", ["/usr/bin", "/bin"], fs, net, exists)


def test_the_default_allowlist() -> None:
    r = build()
    assert r is not None and r.abi == 7 and r.handled_fs == (1 << 16) - 1
    assert r.covers("/opt/p/echo/run.py") and r.covers("/usr/lib/python3.11/json/__init__.py")
    assert r.covers("/opt/venvs/echo/lib/site.py") and r.covers("/etc/ssl/certs/ca.pem")
    assert r.covers("/var/lib/d/a/tmp/x", ll.WRITE_FILE | ll.MAKE_REG | ll.REFER)
    for hidden in ("/etc/passwd", "/proc/self/status", "/opt/p/other/run.py", "/home/x/.ssh/id_rsa", "/tmp/x",
                   "/var/lib/d/b/private.txt"):
        assert not r.covers(hidden), hidden
    assert not r.covers("/usr/bin/x", ll.WRITE_FILE)
    assert r.handled_net == 0 and r.scoped == ll.SCOPE_SIGNAL | ll.SCOPE_ABSTRACT_UNIX_SOCKET


@pytest.mark.parametrize("abi,fs,net,scope", [
    (1, (1 << 13) - 1, 0, 0), (2, (1 << 14) - 1, 0, 0), (3, (1 << 15) - 1, 0, 0), (4, (1 << 15) - 1, 3, 0),
    (5, (1 << 16) - 1, 3, 0), (6, (1 << 16) - 1, 3, 3), (7, (1 << 16) - 1, 3, 3),
])
def test_best_effort_by_abi(abi: int, fs: int, net: int, scope: int) -> None:
    r = build(abi, net=NetworkConfig(connect=(443,)))
    assert r is not None and (r.handled_fs, r.handled_net, r.scoped) == (fs, net, scope)
    assert all(rule.access & ~fs == 0 for rule in r.paths)  # never a right the kernel does not know
    assert r.connect == ((443,) if net else ())


def test_no_landlock_or_unrestricted_means_no_ruleset() -> None:
    assert build(0) is None and build(7, fs="unrestricted") is None


def test_operator_rules_are_added_and_required() -> None:
    r = build(fs=FilesystemConfig(read=("/srv/inbox",), write=("/srv/outbox/",)), net=NetworkConfig(connect=(443,), bind=(0,)))
    assert r is not None and r.covers("/srv/inbox/a") and not r.covers("/srv/inbox/a", ll.WRITE_FILE)
    assert r.covers("/srv/outbox/b", ll.WRITE_FILE) and (r.connect, r.bind) == ((443,), (0,))
    assert all(rule.required for rule in r.paths if rule.why.startswith("filesystem."))


def test_missing_default_paths_are_skipped() -> None:
    r = build(exists=lambda p: p != "/lib64")
    assert r is not None and "/lib64" not in {rule.path for rule in r.paths}


SECRETS = [("config directory", "/etc/ductile"), ("age key", "/etc/ductile/secret/age.key"),
           ("state database", "/var/lib/ductile/ductile.db"), ("vault", "/var/lib/ductile/vault.age")]


class PC:
    def __init__(self, fs: object) -> None:
        self.filesystem = fs


@pytest.mark.parametrize("path,label", [
    ("/etc/ductile/secret/age.key", "age key"), ("/etc/ductile/secret", "age key"), ("/etc", "age key"),
    ("/", "age key"), ("/var/lib/ductile", "state database"), ("/var/lib/ductile/vault.age", "vault"),
    ("/etc/ductile/plugins.yaml", "config directory"),
])
def test_a_rule_reaching_the_secret_surface_is_a_config_error(path: str, label: str) -> None:
    found = ll.rule_findings({"p": PC(FilesystemConfig(read=(path,)))}, SECRETS, lambda p: True)
    assert len(found) == 1 and found[0].severity == "error" and found[0].field == "plugins.p.filesystem.read[0]"
    assert f"the {label} " in found[0].message, found[0].message


def test_rules_must_exist_and_unrestricted_is_a_warning() -> None:
    found = ll.rule_findings({"a": PC(FilesystemConfig(write=("/srv/nope",))), "b": PC("unrestricted"),
                              "c": PC(FilesystemConfig(read=("/srv/ok",)))}, SECRETS, lambda p: p == "/srv/ok")
    assert [(f.severity, f.field) for f in found] == [("error", "plugins.a.filesystem.write[0]"),
                                                     ("warning", "plugins.b.filesystem")]


def test_config_paths_outside_the_allowlist_get_the_rule_to_add() -> None:
    r = build()
    assert r is not None
    hints = ll.hint_findings("folder_watch", {"inbox": "/srv/inbox", "nested": [{"out": "/var/lib/d/a/x"}],
                                              "url": "https://x/y", "text": "/ not a path"}, r)
    assert [h.message for h in hints] == [
        "folder_watch reads /srv/inbox (from its config), outside its Landlock allowlist: add it to "
        "plugins.folder_watch.filesystem.read"]


def test_enforcement_in_words() -> None:
    assert ll.enforcement(0, None, None, True)["landlock"].startswith("NOT ENFORCED")
    assert ll.enforcement(3, None, NetworkConfig(), True)["network"].startswith("NOT ENFORCED")
    assert ll.enforcement(7, None, None, True)["network"].startswith("not restricted")
    assert ll.enforcement(7, None, None, False) == {"landlock": "not applied: the plugin runs unconfined"}


def test_require_landlock_refuses_a_kernel_without_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ductile.config import load_config
    from ductile.errors import BootRefused
    from ductile.runtime.confine import check_landlock

    (tmp_path / "config.yaml").write_text("service: {require_landlock: true}\nplugins: {x: {filesystem: unrestricted}}\n")
    loaded = load_config(str(tmp_path), env={})
    with pytest.raises(BootRefused, match="no Landlock"):
        check_landlock(loaded, 0)
    assert check_landlock(loaded, 7) == ["plugins.x.filesystem: unrestricted — plugin x runs without a Landlock allowlist"]
