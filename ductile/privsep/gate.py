"""The boot gate: a pure truth table deciding the gateway's posture (SPEC §5.2).

    unconfined override set             -> UNCONFINED (loud WARN, the one audited escape)
    capability held  x accounts         -> ENFORCE
    no capability    x no accounts      -> UNCONFINED (INFO: hygiene only)
    capability held  x no accounts      -> REFUSE: would run plugins at gateway privilege
    no capability    x accounts         -> REFUSE: a declared wall the gateway cannot build

The probing wrapper lives in ``ductile.runtime.boot``; this module never touches the OS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Posture = Literal["enforce", "unconfined", "refuse"]


@dataclass(frozen=True)
class GateVerdict:
    posture: Posture
    cell: str        # which row of the table, e.g. "capability+accounts"
    level: Literal["info", "warning", "error"]
    message: str
    fix: str = ""

    @property
    def refused(self) -> bool:
        return self.posture == "refuse"


def evaluate_boot_gate(capability: bool, accounts: int, unconfined: bool) -> GateVerdict:
    """Decide the posture from three facts; ``accounts`` is the number configured."""
    has_accounts = accounts > 0
    cell = f"{'capability' if capability else 'no-capability'}+{'accounts' if has_accounts else 'no-accounts'}"
    if unconfined:
        return GateVerdict(
            "unconfined", f"{cell}+unconfined-override", "warning",
            "service.unconfined is true: every plugin runs at the gateway uid, with no wall"
            + (f" although {accounts} account(s) are configured" if has_accounts else ""),
            "remove service.unconfined to let the boot gate enforce accounts",
        )
    if capability and has_accounts:
        return GateVerdict("enforce", cell, "info",
                           f"privsep enforcing: plugins drop to their resolved account ({accounts} configured)")
    if not capability and not has_accounts:
        return GateVerdict("unconfined", cell, "info",
                           "privsep posture UNCONFINED: no accounts configured; plugins run at the gateway uid (hygiene only)",
                           "configure accounts: and grant CAP_SETUID+CAP_SETGID to enforce a wall")
    if capability:
        return GateVerdict(
            "refuse", cell, "error",
            "the gateway holds the uid-drop capability but no accounts are configured — refusing to run plugins at gateway privilege",
            "configure an accounts: table, start the gateway without CAP_SETUID/CAP_SETGID (not as root), "
            "or set service.unconfined: true",
        )
    return GateVerdict(
        "refuse", cell, "error",
        "accounts are configured but the gateway lacks CAP_SETUID/CAP_SETGID — refusing to run with a wall it cannot enforce",
        "start the gateway with AmbientCapabilities=CAP_SETUID CAP_SETGID (deploy/systemd/ductile.service), "
        "remove the accounts: table, or set service.unconfined: true",
    )
