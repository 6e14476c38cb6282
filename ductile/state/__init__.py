"""The durable state: one SQLite database (WAL) holding the job queue and its ledger,
plugin state, events and the vault audit trail. ``open_state`` is the way in; the stores
hang off the returned ``StateDB`` (``db.jobs``, ``db.plugin_state``, ``db.events``,
``db.schedules``, ``db.audit``)."""

from ductile.state.db import StateDB, open_state

__all__ = ["StateDB", "open_state"]
