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


class PluginStateStore:
    def __init__(self, db: StateDB, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    def get_state(self, plugin: str) -> dict[str, Any]:
        """The plugin's state; ``{}`` before its first update."""
        with self.db.read() as conn:
            row = conn.execute("SELECT state FROM plugin_state WHERE plugin = ?", (plugin,)).fetchone()
        return {} if row is None else dict(from_json(row["state"]))

    def merge_state(self, plugin: str, updates: Mapping[str, Any]) -> dict[str, Any]:
        """Set each key of ``updates`` (other keys are kept) in one transaction; return the result.

        A key set to None is stored as null, not deleted: the plugin sees what it wrote.
        """
        if not isinstance(updates, Mapping):
            raise StateError(f"state_updates must be an object, got {type(updates).__name__}",
                             where=f"plugins.{plugin}.state_updates", fix="return state_updates as a JSON object")
        with self.db.write() as conn:
            row = conn.execute("SELECT state FROM plugin_state WHERE plugin = ?", (plugin,)).fetchone()
            state: dict[str, Any] = {} if row is None else dict(from_json(row["state"]))
            state.update(updates)
            conn.execute("INSERT INTO plugin_state (plugin, state, updated_at) VALUES (?, ?, ?)"
                         " ON CONFLICT (plugin) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                         (plugin, to_json(state, field=f"plugins.{plugin}.state_updates"), self.clock()))
        return state

    def replace_state(self, plugin: str, snapshot: Mapping[str, Any]) -> dict[str, Any]:
        """Make ``snapshot`` the whole state (upstream's ``fact_outputs`` with
        ``compatibility_view: mirror_object``): keys it does not hold are gone."""
        if not isinstance(snapshot, Mapping):
            raise StateError(f"state_updates must be an object, got {type(snapshot).__name__}",
                             where=f"plugins.{plugin}.state_updates", fix="return state_updates as a JSON object")
        state = dict(snapshot)
        with self.db.write() as conn:
            conn.execute("INSERT INTO plugin_state (plugin, state, updated_at) VALUES (?, ?, ?)"
                         " ON CONFLICT (plugin) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                         (plugin, to_json(state, field=f"plugins.{plugin}.state_updates"), self.clock()))
        return state

    def apply(self, plugin: str, updates: Mapping[str, Any], mode: str) -> dict[str, Any]:
        """``replace`` or ``merge`` (see ``Manifest.state_mode``)."""
        return self.replace_state(plugin, updates) if mode == "replace" else self.merge_state(plugin, updates)
