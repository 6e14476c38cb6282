"""Assemble an Executor for a booted Runtime: the one place that decides which secret
composer, fingerprint binder and event sink the shared spawn path uses. ``plugin run`` and
``serve`` both get their executor here, so they cannot drift apart."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ductile.config.model import PluginConfig
from ductile.errors import FingerprintMismatch, GatewayFault, VaultError
from ductile.lock import attest
from ductile.plugins.discovery import Plugin
from ductile.privsep.accounts import ResolvedAccount
from ductile.privsep.fingerprint import Binding, bind_fingerprint
from ductile.runtime.boot import Runtime
from ductile.runtime.executor import EventSink, Executor
from ductile.state.db import StateDB
from ductile.vault.audit import ACTOR_GATEWAY, StateAuditSink
from ductile.vault.cache import CachedVault
from ductile.vault.compose import principal_for
from ductile.vault.document import nonce
from ductile.vault.lifecycle import compose_for_plugin
from ductile.vault.store import VaultStore

OP_FINGERPRINT_MISMATCH = "fingerprint_mismatch"
SECURITY_ALERT = "security_alert"
EVENT_RECONCILE = "ductile.reconcile"
EVENT_ACCOUNT_REFUSED = "ductile.account_refused"


def record_boot(runtime: Runtime, state: StateDB) -> None:
    """The ledger side of the boot: one event row per change the reconcile applied (path,
    before, after) and per account refused, so `job`/event listings show what the gateway
    did to the disk and why an account does not run."""
    with state.write():
        for applied in runtime.applied:
            state.events.record_event(EVENT_RECONCILE, applied.as_dict())
        for name, r in sorted(runtime.refused_accounts.items()):
            state.events.record_event(EVENT_ACCOUNT_REFUSED, {"account": name, "path": r.path, "rule": r.rule,
                                                              "message": r.message, "fix": r.fix})


def gateway_fault(err: VaultError) -> GatewayFault:
    """A vault that cannot be read (key moved, unreadable, vault damaged) stops every job
    that needs it until an operator fixes it: defer, do not fail for good."""
    return GatewayFault(f"the vault cannot be read: {err.where}: {err.message}", where=err.where,
                        fix=f"{err.fix} (jobs are deferred and retried meanwhile)")


def make_executor(runtime: Runtime, state: StateDB, *, emit: EventSink | None = None) -> Executor:
    """An executor that attests every spawn against the lock (downgrading drifted confined
    plugins), composes the plugin's granted secrets as the vault is at each spawn (a roll is
    seen next job; ``CachedVault`` decrypts only when the key or vault file changed) and
    refuses them to a principal that failed attestation, auditing every refusal
    in ``state`` and storing security events there. ``serve`` passes its own ``emit`` so
    a job's security events are stored in the same transaction as the job's outcome."""
    store = CachedVault(VaultStore.from_config(runtime.config.secrets))
    sink = StateAuditSink(state.audit)

    def key(failed: list[VaultError]) -> Callable[[], bytes]:
        def read() -> bytes:
            try:
                return nonce(store.read())
            except VaultError as err:
                failed.append(err)
                raise
        return read

    def bind(plugin: Plugin, resolved: ResolvedAccount) -> Binding:
        failed: list[VaultError] = []
        lock_state, reason = attest(runtime.loaded, plugin, key(failed))
        if failed:  # the key or vault could not be read: the gateway's fault, not drift
            raise gateway_fault(failed[0])
        return bind_fingerprint(resolved, lock_state, runtime.config, plugin.name, reason)

    def compose(name: str, pc: PluginConfig, plugin: Plugin, binding: Binding) -> dict[str, str]:
        if not binding.attested:
            principal = principal_for(name, pc)
            doc = store.read_if_present()
            record = doc.principals.get(principal) if doc is not None else None
            if record is not None and record.status == "active":
                sink.record(OP_FINGERPRINT_MISMATCH, principal, ACTOR_GATEWAY, SECURITY_ALERT,
                            f"plugin={name} lock={binding.state}")
                raise FingerprintMismatch(
                    f"plugin {name} is vault principal '{principal}' but failed attestation ({binding.reason or binding.state}): no secrets delivered",
                    where=f"plugins.{name}", fix=f"review the change, then `ductile plugin lock {name}`")
        try:
            return compose_for_plugin(store, name, pc, sink).secrets
        except VaultError as err:  # unreadable key or vault; policy refusals are other classes
            raise gateway_fault(err) from None

    def record(type: str, payload: dict[str, Any]) -> None:
        state.events.record_event(type, payload, plugin=payload.get("plugin"))  # payload names the job

    return Executor(runtime, bind=bind, compose=compose, emit=emit if emit is not None else record)
