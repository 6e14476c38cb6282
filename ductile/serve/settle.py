"""What the queue should record for one run: a pure table over the executor's outcome.

    executor outcome                         queue outcome              final status
    succeeded                                Succeeded(result)          succeeded
    cancelled by the gateway (shutdown)      None -> requeue_running    queued (attempt not charged)
    gateway fault (key unreadable, plugin    Deferred(now + delay)      queued (attempt not charged)
      directory gone: the gateway's fault)
    failed, terminal                         Failed(reason)             failed
    failed, retryable                        Retry(now + backoff)       queued | dead when exhausted
    timed_out, attempts left                 TimedOut(retry_at)         queued
    timed_out, last attempt                  TimedOut(None)             timed_out

A terminal error is read from ``outcome.terminal`` (exit 78, ``retry: false``, refused drop,
no downgrade target, vault required, a principal that failed attestation, refusals before the spawn), never from message text.
"""

from __future__ import annotations

from ductile.config.model import RetryConfig
from ductile.errors import (
    AccountDropFailed,
    DuctileError,
    FingerprintMismatch,
    GatewayFault,
    JobCancelled,
    NoDowngradeTarget,
    PluginError,
    PluginFailed,
    SpawnFailed,
    VaultPrincipalRequired,
)
from ductile.runtime.outcome import EX_CONFIG, Outcome
from ductile.state.jobs import Deferred, Failed, Retry, Succeeded, TimedOut, backoff
from ductile.state.jobs import Outcome as QueueOutcome


def terminal_reason(error: DuctileError | None, exit_code: int | None) -> str:
    """The rule that made a failure terminal, as the ledger names it."""
    if exit_code == EX_CONFIG:
        return "exit_code_78"
    table: tuple[tuple[type[DuctileError], str], ...] = (
        (AccountDropFailed, "drop_failed"), (NoDowngradeTarget, "no_downgrade_target"),
        (VaultPrincipalRequired, "vault_required"), (FingerprintMismatch, "fingerprint_mismatch"),
        (SpawnFailed, "spawn_failed"),
        (PluginError, "plugin_unavailable"), (PluginFailed, "plugin_retry_false"),
    )
    for cls, reason in table:
        if isinstance(error, cls):
            return reason
    return error.kind if error is not None else "failed"


DEFER_BASE = 1.0    # seconds before a deferred job is tried again; doubles per deferral
DEFER_MAX = 60.0    # a fixed fault is picked up within a minute


def defer_delay(deferrals: int, rand: float) -> float:
    """Seconds until a job deferred ``deferrals`` times in a row is tried again."""
    return backoff(deferrals, DEFER_BASE, DEFER_MAX, rand)


def settle(outcome: Outcome, *, attempt: int, max_attempts: int, retry: RetryConfig, now: float,
           rand: float, deferrals: int = 1) -> QueueOutcome | None:
    """The queue outcome for this run, or None when the gateway itself stopped the job.
    ``deferrals`` counts this job's gateway faults in a row, for the deferral backoff."""
    if isinstance(outcome.error, JobCancelled):
        return None
    if isinstance(outcome.error, GatewayFault):
        return Deferred(outcome.reason, now + defer_delay(deferrals, rand))
    if outcome.status == "succeeded":
        return Succeeded(outcome.response.result if outcome.response is not None else None)
    reason = outcome.reason or outcome.status
    delay = backoff(attempt, retry.backoff_base, retry.backoff_max, rand)
    if outcome.status == "timed_out":
        return TimedOut(reason, None if attempt >= max_attempts else now + delay)
    if outcome.terminal:
        return Failed(reason, terminal_reason(outcome.error, outcome.exit_code))
    return Retry(reason, now + delay)
