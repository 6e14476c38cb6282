"""The broken-config corpus: each file is refused with exit 1, one stderr line that names the
offending field (or file:line), and no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_ductile

BROKEN = Path(__file__).parent / "configs" / "broken"
NO_COMMENT = {"empty.yaml": ["is empty"]}


def _cases() -> list[Path]:
    files = sorted(p for p in BROKEN.glob("*.yaml"))
    dirs = sorted(p / "config.yaml" for p in BROKEN.iterdir() if p.is_dir())
    return files + dirs


def _expectations(path: Path) -> list[str]:
    if path.name in NO_COMMENT:
        return NO_COMMENT[path.name]
    first = path.read_bytes().split(b"\n", 1)[0].decode()
    assert first.startswith("# expect:"), f"{path} lacks an '# expect:' line"
    return [s.strip() for s in first[len("# expect:"):].split("|")]


def test_the_corpus_is_big_enough() -> None:
    assert len(_cases()) >= 30


@pytest.mark.parametrize("path", _cases(), ids=lambda p: p.parent.name if p.name == "config.yaml" else p.stem)
def test_broken_config_is_refused_in_one_line(path: Path) -> None:
    proc = run_ductile("config", "show", "--config", str(path))
    assert_one_line_error(proc, *_expectations(path))
    assert proc.stdout == ""


def test_broken_configs_are_doctor_errors_too() -> None:
    # doctor reports instead of refusing: exit 1 and the finding on stdout
    proc = run_ductile("doctor", "--json", "--config", str(BROKEN / "duplicate_uid.yaml"))
    import json

    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and not report["ok"]
    assert any(f["field"] == "accounts.untrusted.uid" and f["severity"] == "error" for f in report["findings"])
