"""Manual pages render without a groff warning (the lint operators' packaging runs)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import REPO

PAGES = sorted((REPO / "man").glob("*.[1-8]"))


@pytest.mark.needs_tool("groff")
@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_man_page_is_groff_lint_clean(page) -> None:  # type: ignore[no-untyped-def]
    if not shutil.which("groff"):
        pytest.skip("groff is not installed (apt-get install groff-base)")
    proc = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_serve_has_a_man_page() -> None:
    assert (REPO / "man" / "ductile-serve.1").is_file()
