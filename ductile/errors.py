"""The error taxonomy: every refusal is a value with a place, a rule and a fix.

Commands print ``err.one_line()`` on stderr and exit with ``err.exit_code``; the
dispatcher reads ``terminal`` instead of matching strings. Nothing here imports
anything heavier than the standard library.
"""

from __future__ import annotations


class DuctileError(Exception):
    """Base of every expected failure.

    ``where``: the file, field or object the problem is about (``accounts.default.uid``,
    ``/etc/ductile/config.yaml:12``). ``fix``: what the operator should do. ``terminal``:
    a job failing with this error must not be retried.
    """

    kind = "error"
    terminal = False
    exit_code = 1

    def __init__(self, message: str, *, where: str = "", fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.fix = fix

    def one_line(self) -> str:
        """The single stderr line: ``<where>: <message> (fix: <fix>)``, newlines flattened."""
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.fix:
            text = f"{text} (fix: {self.fix})"
        return " ".join(text.split())

    def as_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "where": self.where,
            "message": self.message,
            "fix": self.fix,
            "terminal": self.terminal,
        }

    def __str__(self) -> str:
        return self.one_line()


class ConfigError(DuctileError):
    """The configuration cannot be loaded or breaks a rule."""

    kind = "config"


class PythonRefused(DuctileError):
    """The interpreter itself is unsafe to drop privileges from."""

    kind = "python"


class BootRefused(DuctileError):
    """The boot gate or filesystem reconciliation refuses to start."""

    kind = "boot"


class PluginError(DuctileError):
    """A plugin cannot be discovered, trusted or found."""

    kind = "plugin"


class ProtocolError(DuctileError):
    """A plugin's response breaks protocol v2 (empty, not JSON, oversized, ...)."""

    kind = "protocol"


class PluginFailed(DuctileError):
    """The plugin answered ``status: error`` or exited non-zero; ``terminal`` per its answer."""

    kind = "plugin_failed"

    def __init__(self, message: str, *, where: str = "", fix: str = "", terminal: bool = False) -> None:
        super().__init__(message, where=where, fix=fix)
        self.terminal = terminal


class PluginTimeout(DuctileError):
    """The plugin ran past its timeout and was killed."""

    kind = "timeout"


class JobCancelled(DuctileError):
    """The gateway killed a running job itself (shutdown); it is re-queued, not failed."""

    kind = "cancelled"


class AccountDropFailed(DuctileError):
    """The kernel refused the uid/gid drop at spawn. Never retried."""

    kind = "drop_failed"
    terminal = True


class AccountRefused(DuctileError):
    """The boot refused this account (its state_dir failed reconcile, or a side door):
    its jobs fail until the operator fixes it and restarts. Never retried."""

    kind = "account_refused"
    terminal = True


class SpawnFailed(DuctileError):
    """The plugin could not be started for a reason other than a refused drop."""

    kind = "spawn_failed"

    def __init__(self, message: str, *, where: str = "", fix: str = "", terminal: bool = True) -> None:
        super().__init__(message, where=where, fix=fix)
        self.terminal = terminal


class GatewayFault(DuctileError):
    """The gateway itself could not start a job (its age key unreadable, a plugin directory
    gone): not the plugin's fault, so the job is deferred and retried without charging an
    attempt, and the gateway reports itself degraded until it clears."""

    kind = "gateway_fault"


class NoDowngradeTarget(DuctileError):
    """A plugin failed its fingerprint binding and no ``untrusted`` tier exists."""

    kind = "no_downgrade_target"
    terminal = True


class FingerprintMismatch(DuctileError):
    """A vault principal's bytes no longer match its lock: it gets no secrets. Never retried."""

    kind = "fingerprint_mismatch"
    terminal = True


class VaultError(DuctileError):
    """The vault or its key cannot be used."""

    kind = "vault"


class VaultPrincipalRequired(DuctileError):
    """``requires_vault: true`` and the principal is unknown, revoked or has no vault."""

    kind = "vault_principal_required"
    terminal = True


class LockError(DuctileError):
    """The plugin lock file cannot be read or written safely."""

    kind = "lock"


class StateError(DuctileError):
    """The state database is unusable. ``cause`` names why (``disk_full``, ``corrupt``, ... see
    ``ductile.state.faults``); ``transient`` says whether retrying later may succeed."""

    kind = "state"

    def __init__(self, message: str, *, where: str = "", fix: str = "", cause: str = "other",
                 transient: bool = False) -> None:
        super().__init__(message, where=where, fix=fix)
        self.cause = cause
        self.transient = transient


class UsageError(DuctileError):
    """The command line asked for something impossible."""

    kind = "usage"
    exit_code = 2
