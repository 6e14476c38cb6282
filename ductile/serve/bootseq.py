"""serve's boot, in SPEC §8 order, as one function that either returns everything the
gateway needs or raises one ``DuctileError`` before a single plugin has run:

    load + validate config -> discover plugins -> raise the open-file limit -> single-instance lock
      -> open state (WAL, quick_check)
      -> capability probe -> boot gate -> (enforce) harden + reconcile      [runtime.boot]
      -> containment; sweep every account's leftovers (a killed gateway's orphans)
      -> recover jobs a crash left running (after the sweep: a re-queued job never runs
         beside the orphan of its previous attempt)
      -> schedules (cron checked) -> gateway secrets from the vault -> bind the listener

Messages meant for the log (recovered jobs) are returned, not logged, so a refusal is
still exactly one line on stderr.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from ductile.config import LoadedConfig, load_config
from ductile.errors import BootRefused
from ductile.runtime.boot import Runtime, boot, discover
from ductile.state.instance import InstanceLock
from ductile.serve.limits import NofilePlan, raise_nofile
from ductile.serve.secrets import AuditedSource, GatewaySecrets, SecretSource, VaultSource, resolve_gateway_secrets
from ductile.serve.ticks import Schedule, schedules_of
from ductile.state import StateDB, open_state
from ductile.state.owner import is_alive


@dataclass
class Booted:
    loaded: LoadedConfig
    runtime: Runtime
    db: StateDB
    lock: InstanceLock
    schedules: list[Schedule]
    secrets: GatewaySecrets = field(repr=False)
    listener: socket.socket | None
    recovered: list[tuple[str, str]] = field(default_factory=list)
    swept: list[tuple[str, int | None]] = field(default_factory=list)  # (account, leftovers killed | None: busy)
    nofile: NofilePlan = field(default_factory=lambda: NofilePlan(0, 0, 0, 1024))

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        self.runtime.close()
        self.db.close()
        self.lock.release()


def parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def bind(listen: str) -> socket.socket:
    """The API's listening socket, bound now so a taken port refuses boot, not a later thread."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=128, reuse_port=False)
    except OSError as err:
        raise BootRefused(f"cannot listen on {listen}: {err.strerror}", where="api.listen",
                          fix="choose a free port (or stop what holds it), or set api.enabled: false") from None
    sock.set_inheritable(False)
    # Accepted connections inherit this. Without it a keep-alive client waits out the
    # 40 ms delayed ACK on every response (uvicorn writes headers and body separately and
    # does not set it on sockets it is handed).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def boot_serve(config_path: str | None, *, secret_source: SecretSource | None = None) -> Booted:
    loaded = load_config(config_path)
    config = loaded.config
    discovery = discover(loaded)
    if config.webhooks and not config.api.enabled:
        raise BootRefused("webhooks are configured but api.enabled is false, so nothing would receive them",
                          where="api.enabled", fix="set api.enabled: true or remove the webhooks")
    # before anything opens a descriptor: idle sockets must never starve SQLite of one
    nofile = raise_nofile(max_connections=config.api.max_connections, workers=config.service.max_workers)
    lock = InstanceLock.for_state(config.state.path).acquire()
    db: StateDB | None = None
    listener: socket.socket | None = None
    runtime: Runtime | None = None
    try:
        db = open_state(config.state.path)
        db.quick_check()  # a damaged file is refused here, with the fix, not job by job later
        runtime = boot(loaded, discovery=discovery)
        assert runtime.containment is not None
        swept = runtime.containment.sweep_accounts(config)
        recovered = db.jobs.recover_after_crash(alive=is_alive)  # a live `plugin run` keeps its job
        schedules = schedules_of(config)
        secrets = resolve_gateway_secrets(config, AuditedSource(secret_source or VaultSource(config), db))
        listener = bind(config.api.listen) if config.api.enabled else None
        return Booted(loaded, runtime, db, lock, schedules, secrets, listener, recovered, swept, nofile)
    except BaseException:
        if listener is not None:
            listener.close()
        if runtime is not None:
            runtime.close()
        if db is not None:
            db.close()
        lock.release()
        raise
