"""A plugin's persistent state: the ``state`` sent in each request, updated by its
``state_updates`` (SPEC §4), shallow-merged so a plugin can change one key without
resending the rest, or replaced whole when the manifest's ``fact_outputs`` says the command
answers with a full snapshot (``compatibility_view: mirror_object``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from ductile.errors import StateError
from ductile.state.codec import from_json, to_json
from ductile.state.db import StateDB
from ductile.state.jobs import Failed, Outcome, Succeeded


class StateTooLarge(StateError):
    """``state_updates`` would grow a plugin's state past ``service.max_plugin_state``."""

    def __init__(self, plugin: str, size: int, limit: int) -> None:
        super().__init__(
            f"state_updates would make plugin {plugin}'s stored state {size} bytes, over service.max_plugin_state "
            f"({limit} bytes); the state is unchanged", where=f"plugins.{plugin}",
            fix="keep large data in the plugin's own files (its state_dir) and only references in state, or raise "
                "service.max_plugin_state", cause="state_too_large")


class PluginStateStore:
    def __init__(self, db: StateDB, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    def get_state(self, plugin: str) -> dict[str, Any]:
        """The plugin's state; ``{}`` before its first update."""
        with self.db.read() as conn:
            row = conn.execute("SELECT state FROM plugin_state WHERE plugin = ?", (plugin,)).fetchone()
        return {} if row is None else dict(from_json(row["state"]))

    def merge_state(self, plugin: str, updates: Mapping[str, Any], *, limit: int | None = None) -> dict[str, Any]:
        """Set each key of ``updates`` (other keys are kept) in one transaction; return the result.

        A key set to None is stored as null, not deleted: the plugin sees what it wrote.
        With ``limit``, a merged state whose JSON is larger is refused (``StateTooLarge``)
        before anything is written: the state is sent with every request, so one runaway
        plugin would otherwise cost memory and time on every run from then on.
        """
        return self.apply(plugin, updates, "merge", limit=limit)

    def replace_state(self, plugin: str, snapshot: Mapping[str, Any], *, limit: int | None = None) -> dict[str, Any]:
        """Make ``snapshot`` the whole state (upstream's ``fact_outputs`` with
        ``compatibility_view: mirror_object``): keys it does not hold are gone."""
        return self.apply(plugin, snapshot, "replace", limit=limit)

    def apply(self, plugin: str, updates: Mapping[str, Any], mode: str, *, limit: int | None = None) -> dict[str, Any]:
        """``replace`` or ``merge`` (see ``Manifest.state_mode``), within ``limit`` bytes of JSON."""
        if not isinstance(updates, Mapping):
            raise StateError(f"state_updates must be an object, got {type(updates).__name__}",
                             where=f"plugins.{plugin}.state_updates", fix="return state_updates as a JSON object")
        with self.db.write() as conn:
            state: dict[str, Any] = {}
            if mode != "replace":
                row = conn.execute("SELECT state FROM plugin_state WHERE plugin = ?", (plugin,)).fetchone()
                state = {} if row is None else dict(from_json(row["state"]))
            state.update(updates)
            text = to_json(state, field=f"plugins.{plugin}.state_updates")
            size = len(text.encode("utf-8"))
            if limit is not None and size > limit:
                raise StateTooLarge(plugin, size, limit)
            conn.execute("INSERT INTO plugin_state (plugin, state, updated_at) VALUES (?, ?, ?)"
                         " ON CONFLICT (plugin) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                         (plugin, text, self.clock()))
        return state


def apply_state_updates(db: StateDB, plugin: str, decision: Outcome, updates: Mapping[str, Any] | None, *,
                        limit: int, mode: str = "merge") -> tuple[Outcome, StateTooLarge | None]:
    """Merge (or, ``mode="replace"``, replace) a successful run's ``state_updates`` (call
    inside the write block that records the run). Over ``limit`` (``service.max_plugin_state``) the run fails instead, reason
    ``state_too_large`` (returned with the refusal), and the state is left as it was: a
    retry would only produce the same state again. Shared by serve and ``plugin run``."""
    if not isinstance(decision, Succeeded) or not updates:
        return decision, None
    try:
        db.plugin_state.apply(plugin, dict(updates), mode, limit=limit)
    except StateTooLarge as err:
        return Failed(err.one_line(), "state_too_large"), err
    return decision, None
