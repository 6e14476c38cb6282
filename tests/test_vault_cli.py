"""`ductile vault ...` as an operator runs it: outputs, refusals, and values that never leak."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_ductile, run_in_pty
from vault_helpers import canary, snapshot, store_at, write_config


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_config(tmp_path, """
        plugins:
          echo: {requires_vault: true}
    """)


def vault(cfg: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_ductile("vault", *args, "--config", str(cfg), input=input)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def test_operator_flow_init_principal_set_grant_list(cfg: Path) -> None:
    out = ok(vault(cfg, "init"))
    assert "created age key" in out and "created vault" in out and "age1" in out
    ok(vault(cfg, "principal", "add", "echo"))
    ok(vault(cfg, "principal", "add", "other"))
    assert "created; granted to: echo" in ok(vault(cfg, "set", "tok", "--grant", "echo", input="one\n"))
    assert "rolled (roll 1)" in ok(vault(cfg, "set", "tok", input="two\n"))
    assert "granted tok to other" in ok(vault(cfg, "grant", "tok", "other"))
    assert "already granted" in ok(vault(cfg, "grant", "tok", "other"))
    assert "revoked tok from other" in ok(vault(cfg, "revoke", "tok", "other"))
    listing = json.loads(ok(vault(cfg, "list", "--json")))
    [tok] = listing["secrets"]
    assert tok["name"] == "tok" and tok["principals"] == ["echo"] and tok["roll_count"] == 1
    assert set(tok) == {"name", "principals", "created_at", "rolled_at", "roll_count"}
    plain = ok(vault(cfg, "list"))
    assert plain.splitlines()[0].split() == ["SECRET", "PRINCIPALS", "CREATED", "ROLLED", "ROLLS"]
    ok(vault(cfg, "principal", "revoke", "other"))
    principals = {p["name"]: p for p in json.loads(ok(vault(cfg, "principal", "list", "--json")))["principals"]}
    assert principals["echo"]["secrets"] == ["tok"] and principals["other"]["status"] == "revoked"
    assert store_at(cfg).read().secrets["tok"].value == "two"


def test_lifecycle_refusals_are_one_line(cfg: Path) -> None:
    assert_one_line_error(vault(cfg, "list"), "does not exist", "vault init")
    ok(vault(cfg, "init"))
    assert_one_line_error(vault(cfg, "init"), "already exists")
    assert_one_line_error(vault(cfg, "set", "tok", "--grant", "ghost", input="v"), "principal ghost",
                          "vault principal add ghost")
    assert_one_line_error(vault(cfg, "grant", "missing", "echo"), "secret missing")
    assert_one_line_error(vault(cfg, "principal", "add", "Not_Kebab"), "kebab-case")
    assert_one_line_error(vault(cfg, "set", "tok", input="\n"), "empty")


def test_set_takes_no_value_on_the_command_line(cfg: Path) -> None:
    from ductile_commands.vault import set_

    assert {p.name for p in set_.params} == {"name", "grants", "prompt", "config_path"}
    ok(vault(cfg, "init"))
    proc = vault(cfg, "set", "tok", "--value", "x", input="v")
    assert proc.returncode == 2 and "No such option" in proc.stderr


def test_set_refuses_a_terminal_on_stdin(cfg: Path) -> None:
    ok(vault(cfg, "init"))
    master, slave = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "ductile", "vault", "set", "tok", "--config", str(cfg)],
                              stdin=slave, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "NO_COLOR": "1"})
    finally:
        os.close(slave)
        os.close(master)
    assert_one_line_error(proc, "secret tok", "terminal", "--prompt")
    assert "tok" not in store_at(cfg).read().secrets


def test_prompt_reads_the_value_hidden(cfg: Path) -> None:
    ok(vault(cfg, "init"))
    value = canary()
    code, out = run_in_pty(
        [sys.executable, "-m", "ductile", "vault", "set", "tok", "--prompt", "--config", str(cfg)],
        {"NO_COLOR": "1"},
        [(b"value for tok", value.encode() + b"\n"), (b"Repeat for confirmation", value.encode() + b"\n")])
    assert code == 0, out
    assert value.encode() not in out  # not echoed to the terminal
    assert store_at(cfg).read().secrets["tok"].value == value


def test_a_value_never_appears_in_any_command_output(cfg: Path) -> None:
    value = canary()
    runs = [vault(cfg, "init"), vault(cfg, "principal", "add", "echo"),
            vault(cfg, "set", "tok", "--grant", "echo", input=value + "\n"),
            vault(cfg, "set", "api-ops", input=value),
            vault(cfg, "set", "tok", "--grant", "ghost", input=value),  # refused after reading the value
            vault(cfg, "set", "bad name", input=value),
            vault(cfg, "list"), vault(cfg, "list", "--json"),
            vault(cfg, "principal", "list"), vault(cfg, "principal", "list", "--json"),
            vault(cfg, "grant", "api-ops", "echo"), vault(cfg, "revoke", "api-ops", "echo"),
            run_ductile("doctor", "--config", str(cfg)), run_ductile("doctor", "--json", "--config", str(cfg)),
            run_ductile("config", "show", "--effective", "--config", str(cfg)),
            vault(cfg, "rotate-key"), vault(cfg, "list", "--json")]
    # doctor's verdict depends on the host's posture (root without accounts is refused);
    # only the two refused `set`s must fail among the vault commands
    vault_runs = [r for r in runs if "doctor" not in r.args]
    assert [r.returncode for r in vault_runs].count(0) == len(vault_runs) - 2
    for proc in runs:
        assert value not in proc.stdout and value not in proc.stderr, proc.args
    root = store_at(cfg)
    assert root.read().secrets["tok"].value == value
    for path in (root.vault_file, root.backup_file):
        assert value.encode() not in Path(path).read_bytes()


PROBE = textwrap.dedent("""
    import json, os, sys
    spawned = []

    def hook(event, args):
        if event in ("subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.fork"):
            spawned.append(repr(args))

    sys.addaudithook(hook)
    from ductile.cli import main
    try:
        main(["vault", "set", "tok", "--grant", "echo", "--config", sys.argv[1]])
    except SystemExit as exc:
        code = exc.code
    with open("/proc/self/cmdline", "rb") as fh:
        cmdline = fh.read()
    report = {"code": code, "spawned": spawned, "cmdline": cmdline.decode("utf-8", "replace"),
              "environ": json.dumps(dict(os.environ))}
    print(json.dumps(report), file=sys.stderr)
""")


def test_a_value_never_reaches_argv_env_or_a_child_process(cfg: Path) -> None:
    ok(vault(cfg, "init"))
    ok(vault(cfg, "principal", "add", "echo"))
    value = canary()
    proc = subprocess.run([sys.executable, "-c", PROBE, str(cfg)], input=value + "\n", capture_output=True,
                          text=True, timeout=60)
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report["code"] in (0, None), proc.stderr
    assert value not in report["cmdline"] and value not in report["environ"]
    assert not any(value in args for args in report["spawned"])
    assert value not in proc.stdout
    assert store_at(cfg).read().secrets["tok"].value == value


@pytest.mark.parametrize("how", ["loose-key", "wrong-key", "truncated", "flipped"])
def test_damaged_key_or_vault_is_a_one_line_refusal_and_files_stay_identical(cfg: Path, how: str) -> None:
    from pyrage import x25519

    ok(vault(cfg, "init"))
    ok(vault(cfg, "set", "tok", input="first"))
    store = store_at(cfg)
    data = Path(store.vault_file).read_bytes()
    if how == "loose-key":
        os.chmod(store.key_file, 0o640)
    elif how == "wrong-key":
        Path(store.key_file).write_text(f"# other\n{x25519.Identity.generate()}\n")
    elif how == "truncated":
        Path(store.vault_file).write_bytes(data[: len(data) - 20])
    else:
        Path(store.vault_file).write_bytes(data[:-16] + bytes([data[-16] ^ 0x80]) + data[-15:])
    before = snapshot(cfg / "secret", cfg / "state", skip_prefix="ductile.db")
    needle = store.key_file if how == "loose-key" else store.vault_file
    for args, stdin in ((("list",), None), (("set", "tok"), "second"), (("principal", "add", "echo"), None),
                        (("rotate-key",), None)):
        line = assert_one_line_error(vault(cfg, *args, input=stdin), needle, "fix:")
        if how == "loose-key":
            assert "0640" in line and f"chmod 0600 {store.key_file}" in line
    assert snapshot(cfg / "secret", cfg / "state", skip_prefix="ductile.db") == before
    refused = [r for r in json.loads(ok(vault(cfg, "audit", "--json"))) if r["outcome"] == "refused"]
    assert refused, "refused vault operations must leave audit rows"


def test_rotate_key_says_where_the_old_key_is(cfg: Path) -> None:
    ok(vault(cfg, "init"))
    ok(vault(cfg, "set", "tok", input="v"))
    out = ok(vault(cfg, "rotate-key"))
    store = store_at(cfg)
    assert f"shred -u {store.old_key_file}" in out and os.path.exists(store.old_key_file)
    assert_one_line_error(vault(cfg, "rotate-key"), store.old_key_file, "shred -u")
    assert store.read().secrets["tok"].value == "v"


def test_audit_shows_a_detail_for_every_kind_of_row(cfg: Path) -> None:
    """The gateway's secret_ref reads (gateway_ref rows) carry {ref, why}, not {detail}: the
    table must still say which secret and why, never an empty DETAIL."""
    from ductile.state.db import open_state
    from ductile.vault.audit import describe_detail

    ok(vault(cfg, "init"))
    audit = open_state(str(cfg / "state" / "ductile.db")).audit
    audit.record_audit("gateway_ref", None, "gateway", "ok", {"ref": "api-ops"})
    audit.record_audit("gateway_ref", None, "gateway", "refused", {"ref": "gone", "why": "no such secret"})
    rows = ok(vault(cfg, "audit")).splitlines()
    refs = [r for r in rows if " gateway_ref " in r]
    assert len(refs) == 2
    assert any(r.rstrip().endswith("ref=api-ops") for r in refs)
    assert any(r.rstrip().endswith("ref=gone why=no such secret") for r in refs)
    assert describe_detail({"detail": "created"}) == "created" and describe_detail(None) == ""
