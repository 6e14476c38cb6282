"""The vault is a plain age file: the age CLI opens ours, and we open what the age CLI makes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from vault_helpers import store_at

from ductile.vault import ops
from ductile.vault.document import utc_now
from ductile.vault.store import VaultStore

pytestmark = pytest.mark.needs_tool("age")


@pytest.fixture(autouse=True)
def _age_cli() -> None:
    if shutil.which("age") is None or shutil.which("age-keygen") is None:
        pytest.skip("the age CLI (age, age-keygen) is not installed; `make tools` installs it")


def test_a_vault_written_by_ductile_decrypts_with_age_cli(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    store.initialize()
    store.update(lambda d: (ops.set_secret(d, "api-ops", "from-ductile", [], utc_now())[0], None))
    out = subprocess.run(["age", "-d", "-i", store.key_file, store.vault_file], capture_output=True, check=True)
    doc = json.loads(out.stdout)
    assert doc["version"] == 1 and doc["secrets"]["api-ops"]["value"] == "from-ductile"
    assert bytes.fromhex(doc["nonce"]) and len(bytes.fromhex(doc["nonce"])) == 32


@pytest.mark.parametrize("armor", [False, True])
def test_a_document_encrypted_by_age_cli_with_an_age_keygen_key_is_read(tmp_path: Path, armor: bool) -> None:
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir(mode=0o700)
    (tmp_path / "state").mkdir(mode=0o700)
    store = store_at(tmp_path)
    subprocess.run(["age-keygen", "-o", store.key_file], capture_output=True, check=True)
    assert Path(store.key_file).read_text().startswith("#")  # comment lines included
    os.chmod(store.key_file, 0o600)
    recipient = subprocess.run(["age-keygen", "-y", store.key_file], capture_output=True, text=True,
                               check=True).stdout.strip()
    document = {
        "version": 1, "nonce": "5a" * 32,
        "principals": {"echo": {"status": "active", "created_at": "2026-01-01T00:00:00Z"}},
        "secrets": {"echo-token": {"value": "made-by-age-cli", "principals": ["echo"],
                                   "created_at": "2026-01-01T00:00:00Z"}},
    }
    subprocess.run(["age", "-r", recipient, *(["-a"] if armor else []), "-o", store.vault_file],
                   input=json.dumps(document).encode(), check=True)
    doc = VaultStore(store.key_file, store.vault_file).read()
    assert doc.secrets["echo-token"].value == "made-by-age-cli" and doc.principals["echo"].status == "active"
    # and ductile can keep writing it with that key
    store.update(lambda d: (ops.set_secret(d, "echo-token", "rolled", [], utc_now())[0], None))
    out = subprocess.run(["age", "-d", "-i", store.key_file, store.vault_file], capture_output=True, check=True)
    assert json.loads(out.stdout)["secrets"]["echo-token"]["roll_count"] == 1
