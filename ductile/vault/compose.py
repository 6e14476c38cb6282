"""Which secrets a plugin's principal receives at spawn: a pure decision over the document.

The truth table (``requires_vault`` = plugins.<name>.requires_vault):

    vault     principal   requires_vault=false          requires_vault=true
    absent    -           no secrets                    VaultPrincipalRequired (no vault)
    present   active      its granted secrets           its granted secrets
    present   revoked     VaultPrincipalRequired        VaultPrincipalRequired (revoked: fail closed)
    present   unknown     no secrets (fail-open, as     VaultPrincipalRequired (unknown)
                          upstream: the opt-out seam)

An unknown principal that some secret nevertheless names gets a ``principal_unknown`` denial per
such secret, so the withheld grant shows up in the audit instead of vanishing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ductile.config.model import PluginConfig
from ductile.errors import VaultPrincipalRequired
from ductile.vault.document import VaultDocument

DENIAL_PRINCIPAL_UNKNOWN = "principal_unknown"


@dataclass(frozen=True)
class Composition:
    """The secrets for one spawn (name -> value) and what was withheld (secret, reason)."""

    secrets: dict[str, str] = field(default_factory=dict)
    denials: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        return f"Composition(secrets={sorted(self.secrets)!r} (values redacted), denials={list(self.denials)!r})"

    __str__ = __repr__


def principal_for(plugin_name: str, plugin_config: PluginConfig | None) -> str:
    """``plugins.<name>.vault_principal`` when set, else the plugin name itself."""
    if plugin_config is not None and plugin_config.vault_principal:
        return plugin_config.vault_principal
    return plugin_name


def compose(doc: VaultDocument | None, principal: str, *, requires_vault: bool, vault_present: bool) -> Composition:
    """Apply the table above. ``doc`` must be given exactly when ``vault_present``."""
    if vault_present != (doc is not None):
        raise ValueError("compose: pass the document exactly when the vault is present")
    if doc is None:
        if requires_vault:
            raise VaultPrincipalRequired(
                "has requires_vault: true but there is no vault", where=f"principal {principal}",
                fix="create it (ductile vault init), add the principal and grant its secrets")
        return Composition()
    record = doc.principals.get(principal)
    if record is None:
        if requires_vault:
            raise VaultPrincipalRequired(
                "is not in the vault and its plugin has requires_vault: true", where=f"principal {principal}",
                fix=f"ductile vault principal add {principal}, then grant its secrets")
        named_in = tuple((name, DENIAL_PRINCIPAL_UNKNOWN)
                         for name, secret in sorted(doc.secrets.items()) if principal in secret.principals)
        return Composition(denials=named_in)
    if record.status != "active":
        raise VaultPrincipalRequired(
            "is revoked: its plugin gets no secrets and fails closed", where=f"principal {principal}",
            fix="run the plugin under a new principal (plugins.<name>.vault_principal) or disable it")
    granted = {name: secret.value for name, secret in sorted(doc.secrets.items()) if principal in secret.principals}
    return Composition(secrets=granted)
