"""Credential building: everything the spawn edge needs, decided here as plain data (SPEC §5.5).

A confined plugin is exec'd through ``/usr/bin/env -C <state_dir> -- <entrypoint>``:
CPython's ``Popen(cwd=...)`` changes directory *before* it drops privileges, so a cap-only
gateway (which cannot enter an account's 0700 directory) would fail, and a root gateway
would silently hide an untraversable parent. ``env -C`` changes directory after the drop,
as the account, and then execs the entrypoint with no extra argv.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ductile.config.model import ServiceConfig
from ductile.privsep.accounts import ResolvedAccount
from ductile.privsep.env import build_env

ENV_TRAMPOLINE = "/usr/bin/env"
STDERR_TAIL = 64 * 1024
UMASK = 0o077


@dataclass(frozen=True)
class SpawnSpec:
    argv: tuple[str, ...]
    env: dict[str, str] = field(repr=False)
    entrypoint: str
    workdir: str                 # where the plugin runs (its HOME when confined)
    # What Popen itself chdirs to, before any drop. None for confined spawns: CPython
    # reports any pre-exec failure with ``filename=cwd`` when cwd is set, which would hide a
    # refused drop (filename None) behind a bogus directory name; env -C does the chdir.
    popen_cwd: str | None
    uid: int | None              # None: no drop (unconfined)
    gid: int | None
    groups: tuple[int, ...]      # supplementary groups after the drop: always empty
    umask: int
    timeout: float
    kill_grace: float
    max_stdout: int
    stderr_tail: int
    account: str | None

    @property
    def drops(self) -> bool:
        return self.uid is not None


def build_spawn_spec(resolved: ResolvedAccount, entrypoint: str, service: ServiceConfig,
                     gateway_env: Mapping[str, str], *, timeout: float, unconfined_workdir: str,
                     gateway_uid: int | None = None, program: tuple[str, ...] | None = None) -> SpawnSpec:
    """The one place a plugin's credentials, argv, env and limits are decided.

    ``program`` replaces the bare entrypoint for ductile's own probes (interpreter + script);
    plugins are always exec'd as their entrypoint alone.
    """
    resolved.validate(gateway_uid)
    command = program or (entrypoint,)
    common = dict(entrypoint=entrypoint, umask=UMASK, timeout=timeout, kill_grace=service.kill_grace,
                  max_stdout=service.max_plugin_output, stderr_tail=STDERR_TAIL)
    if resolved.confined:
        assert resolved.state_dir is not None  # validate() guarantees it
        return SpawnSpec(
            argv=(ENV_TRAMPOLINE, "-C", resolved.state_dir, "--", *command),
            env=build_env(gateway_env, service.plugin_env_passthrough, resolved.state_dir),
            workdir=resolved.state_dir, popen_cwd=None, uid=resolved.uid, gid=resolved.gid, groups=(),
            account=resolved.name, **common,  # type: ignore[arg-type]
        )
    return SpawnSpec(
        argv=command, env=build_env(gateway_env, service.plugin_env_passthrough, unconfined_workdir),
        workdir=unconfined_workdir, popen_cwd=unconfined_workdir, uid=None, gid=None, groups=(),
        account=None, **common,  # type: ignore[arg-type]
    )
