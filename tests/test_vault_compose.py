"""compose: the secrets a principal receives at spawn, every cell of the table, and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ductile.config.model import PluginConfig
from ductile.errors import VaultPrincipalRequired
from ductile.vault.compose import DENIAL_PRINCIPAL_UNKNOWN, Composition, compose, principal_for
from ductile.vault.document import PrincipalRecord, SecretRecord, VaultDocument

T0 = "2026-01-01T00:00:00Z"


def _doc() -> VaultDocument:
    return VaultDocument(
        nonce_hex="00" * 32,
        principals={"alpha": PrincipalRecord("active", T0), "gone": PrincipalRecord("revoked", T0, T0)},
        secrets={
            "a-only": SecretRecord("va", ("alpha",), T0),
            "shared": SecretRecord("vs", ("alpha", "gone", "ghost"), T0),
            "gone-only": SecretRecord("vg", ("gone",), T0),
            "ghost-only": SecretRecord("vh", ("ghost",), T0),
            "nobody": SecretRecord("vn", (), T0),
        },
    )


# (vault present, principal, requires_vault) -> secrets delivered | (error, words in its message)
CELLS = [
    (False, "alpha", False, {}),
    (False, "alpha", True, (VaultPrincipalRequired, "no vault")),
    (True, "alpha", False, {"a-only": "va", "shared": "vs"}),
    (True, "alpha", True, {"a-only": "va", "shared": "vs"}),
    (True, "gone", False, (VaultPrincipalRequired, "revoked")),
    (True, "gone", True, (VaultPrincipalRequired, "revoked")),
    (True, "ghost", False, {}),
    (True, "ghost", True, (VaultPrincipalRequired, "not in the vault")),
]


@pytest.mark.parametrize("present,principal,requires,expected", CELLS)
def test_every_cell_of_the_compose_table(present: bool, principal: str, requires: bool, expected: object) -> None:
    doc = _doc() if present else None
    if isinstance(expected, tuple):
        error, words = expected
        with pytest.raises(error) as info:
            compose(doc, principal, requires_vault=requires, vault_present=present)
        assert words in info.value.one_line() and f"principal {principal}" in info.value.one_line()
        assert info.value.terminal and info.value.fix
    else:
        assert compose(doc, principal, requires_vault=requires, vault_present=present).secrets == expected


def test_revoked_and_unknown_principals_fail_with_distinct_messages() -> None:
    messages = set()
    for principal in ("gone", "ghost"):
        with pytest.raises(VaultPrincipalRequired) as info:
            compose(_doc(), principal, requires_vault=True, vault_present=True)
        messages.add(info.value.message)
    assert len(messages) == 2


def test_unknown_principal_named_in_grants_is_reported_as_denials() -> None:
    result = compose(_doc(), "ghost", requires_vault=False, vault_present=True)
    assert result.secrets == {}
    assert result.denials == (("ghost-only", DENIAL_PRINCIPAL_UNKNOWN), ("shared", DENIAL_PRINCIPAL_UNKNOWN))


def test_document_must_match_vault_present() -> None:
    with pytest.raises(ValueError):
        compose(None, "alpha", requires_vault=False, vault_present=True)
    with pytest.raises(ValueError):
        compose(_doc(), "alpha", requires_vault=False, vault_present=False)


def test_composition_repr_names_secrets_but_not_values() -> None:
    comp = compose(_doc(), "alpha", requires_vault=False, vault_present=True)
    for text in (repr(comp), str(comp)):
        assert "a-only" in text and "va'" not in text and "vs'" not in text


@pytest.mark.parametrize("plugin,config,expected", [
    ("echo", None, "echo"),
    ("echo", PluginConfig(), "echo"),
    ("my_plugin", PluginConfig(vault_principal="my-plugin"), "my-plugin"),
])
def test_principal_is_vault_principal_or_plugin_name(plugin: str, config: PluginConfig | None, expected: str) -> None:
    assert principal_for(plugin, config) == expected


# -- properties --------------------------------------------------------------------------------

NAMES = st.sampled_from(["p1", "p2", "p3", "p4", "p5"])  # some become principals, others stay unknown


@st.composite
def documents(draw: st.DrawFn) -> VaultDocument:
    principals = draw(st.dictionaries(NAMES, st.sampled_from(["active", "revoked"]), max_size=5))
    secrets = draw(st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True),
        st.tuples(st.text(min_size=1, max_size=8), st.lists(NAMES, max_size=5, unique=True)),
        max_size=8))
    return VaultDocument(
        nonce_hex="ab" * 32,
        principals={n: PrincipalRecord(s, T0) for n, s in principals.items()},  # type: ignore[arg-type]
        secrets={n: SecretRecord(v, tuple(sorted(g)), T0) for n, (v, g) in secrets.items()},
    )


@given(documents(), NAMES, st.booleans())
def test_compose_returns_exactly_the_granted_secrets_of_an_active_principal(
        doc: VaultDocument, principal: str, requires: bool) -> None:
    record = doc.principals.get(principal)
    try:
        result: Composition | None = compose(doc, principal, requires_vault=requires, vault_present=True)
    except VaultPrincipalRequired:
        result = None
    granted = {n: s.value for n, s in doc.secrets.items() if principal in s.principals}
    if record is not None and record.status == "revoked":
        assert result is None  # never anything for a revoked principal, whatever requires_vault says
    elif record is None:
        assert (result is None) == requires
        assert result is None or result.secrets == {}
    else:
        assert result is not None and result.secrets == granted
    if result is not None:
        for name, value in result.secrets.items():
            assert principal in doc.secrets[name].principals and doc.secrets[name].value == value
