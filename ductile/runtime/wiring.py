"""Assemble an Executor for a booted Runtime: the one place that decides which secret
composer, fingerprint binder and event sink the shared spawn path uses. ``plugin run`` and
``serve`` both get their executor here, so they cannot drift apart."""

from __future__ import annotations

from typing import Any

from ductile.config.model import PluginConfig
from ductile.plugins.discovery import Plugin
from ductile.runtime.boot import Runtime
from ductile.runtime.executor import Executor
from ductile.state.db import StateDB
from ductile.vault.audit import StateAuditSink
from ductile.vault.lifecycle import compose_for_plugin
from ductile.vault.store import VaultStore


def make_executor(runtime: Runtime, state: StateDB) -> Executor:
    """An executor whose compose reads the vault fresh per spawn (a roll is seen next job),
    audits every compose refusal/denial into ``state``, and stores security events there."""
    store = VaultStore.from_config(runtime.config.secrets)
    sink = StateAuditSink(state.audit)

    def compose(name: str, pc: PluginConfig, plugin: Plugin) -> dict[str, str]:
        return compose_for_plugin(store, name, pc, sink).secrets

    def emit(type: str, payload: dict[str, Any]) -> None:
        state.events.record_event(type, payload, plugin=payload.get("plugin"))  # payload names the job

    return Executor(runtime, compose=compose, emit=emit)
