"""Which account a plugin runs as (SPEC §5.3), as a pure function of the config.

The operator's ``run_as`` grant wins; no grant falls back to the ``default`` tier if it
exists, else unconfined. The plugin's manifest is never consulted: a plugin cannot ask for
an identity. ``ResolvedAccount.validate`` is the last check before a drop and fails closed.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Literal

from ductile.config.model import UID_MAX, Config
from ductile.errors import AccountDropFailed, ConfigError

Source = Literal["granted", "default", "downgraded", "unconfined"]
DEFAULT_TIER = "default"
UNTRUSTED_TIER = "untrusted"


@dataclass(frozen=True)
class ResolvedAccount:
    """An identity to drop to, or the explicit absence of one (``source == "unconfined"``)."""

    name: str | None
    uid: int | None
    gid: int | None
    state_dir: str | None
    source: Source

    @property
    def confined(self) -> bool:
        return self.source != "unconfined"

    @classmethod
    def unconfined(cls) -> ResolvedAccount:
        return cls(None, None, None, None, "unconfined")

    def describe(self) -> str:
        if not self.confined:
            return "unconfined (gateway uid)"
        return f"account {self.name} (uid {self.uid}, gid {self.gid}, {self.source})"

    def validate(self, gateway_uid: int | None = None) -> ResolvedAccount:
        """Refuse anything that could turn a drop into no drop, or a drop to root."""
        if not self.confined:
            if any(v is not None for v in (self.name, self.uid, self.gid, self.state_dir)):
                raise AccountDropFailed("an unconfined resolution carries an identity; refusing to guess which applies",
                                        where="privsep", fix="this is a bug in account resolution; report it")
            return self
        problems = []
        if not self.name:
            problems.append("no account name")
        for label, value in (("uid", self.uid), ("gid", self.gid)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= UID_MAX:
                problems.append(f"{label} {value!r} is not in 1..{UID_MAX} (never root)")
        if gateway_uid is not None and self.uid == gateway_uid:
            problems.append(f"uid {self.uid} is the gateway's own uid")
        if not isinstance(self.state_dir, str) or not self.state_dir.startswith("/") \
                or posixpath.normpath(self.state_dir) == "/":
            problems.append(f"state_dir {self.state_dir!r} is not an absolute private directory")
        if problems:
            raise AccountDropFailed(f"refusing privilege drop: {'; '.join(problems)}",
                                    where=f"accounts.{self.name or '?'}", fix="fix the account in the config")
        return self


def account(config: Config, name: str, source: Source) -> ResolvedAccount:
    acct = config.accounts[name]
    return ResolvedAccount(name, acct.uid, acct.gid, acct.state_dir, source)


def resolve_account(config: Config, plugin: str, enforcing: bool) -> ResolvedAccount:
    """The account ``plugin`` runs as. Not enforcing (unconfined posture) -> unconfined."""
    if not enforcing:
        return ResolvedAccount.unconfined()
    pc = config.plugins.get(plugin)
    grant = pc.run_as if pc is not None else None
    if grant:
        if grant not in config.accounts:
            raise ConfigError(f"plugin grants an undefined account '{grant}'", where=f"plugins.{plugin}.run_as",
                              fix=f"define accounts.{grant} or change the grant")
        return account(config, grant, "granted")
    if DEFAULT_TIER in config.accounts:
        return account(config, DEFAULT_TIER, "default")
    return ResolvedAccount.unconfined()


def accounts_by_plugin(config: Config, plugins: list[str], enforcing: bool) -> dict[str, ResolvedAccount]:
    return {p: resolve_account(config, p, enforcing) for p in plugins}
