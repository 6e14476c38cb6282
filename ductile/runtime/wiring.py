"""Assemble an Executor for a booted Runtime: the one place that decides which secret
composer, fingerprint binder and event sink the shared spawn path uses."""

from __future__ import annotations

from ductile.runtime.boot import Runtime
from ductile.runtime.executor import EventSink, Executor, _ignore


def make_executor(runtime: Runtime, *, emit: EventSink = _ignore) -> Executor:
    return Executor(runtime, emit=emit)
