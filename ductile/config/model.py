"""The configuration model: frozen dataclasses, one per YAML mapping (SPEC §3).

Each field's metadata (``spec(...)``) drives three things from one place: the strict
decoder (``decode.py``), the JSON Schema (``schema.py``) and the documentation. Cross-field
rules (duplicate uids, undefined grants, ...) live in ``rules.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

UID_MAX = 2_147_483_647
KEBAB = r"^[a-z0-9]+(-[a-z0-9]+)*$"
# One rule per kind of name, and the words that state it: every message about a name quotes
# its HINT (tests/test_compat_pure.py checks each HINT against its pattern). Plugin names may
# start with '_' because upstream's own template is `_template`.
NAME_BODY = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
NAME = rf"^{NAME_BODY}$"
NAME_HINT = "letters, digits, '_', '.' or '-', starting with a letter, a digit or '_'"
ACCOUNT_NAME = r"^[a-z][a-z0-9_-]*$"
ACCOUNT_NAME_HINT = "lowercase letters, digits, '_' or '-', starting with a lowercase letter"
COMMAND_NAME = r"^[A-Za-z][A-Za-z0-9_-]*$"
COMMAND_NAME_HINT = "letters, digits, '_' or '-', starting with a letter"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
EVENT_TYPE = r"^[A-Za-z0-9_.*:-]+$"
SECRET_REF = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
HEADER_NAME = r"^[A-Za-z0-9-]+$"
ONLY_BETWEEN = r"^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$"
WEEKDAY = r"^(mon|tue|wed|thu|fri|sat|sun|[0-7])$"

# kinds: how a YAML value becomes the stored value (see decode.py)
#   duration  "30s" -> float seconds      size   4MiB or int -> int bytes
#   path      str, relative to the file that declares it -> absolute
#   abspath   str that must already be absolute (account state_dir)
#   listen    "host:port"                 cron   five-field cron text
#   percent   "50%" -> int 50 (a share of one CPU; 200% is two CPUs)
#   timezone  an IANA zone name (Europe/Berlin, UTC), checked against the zone database
#   instant   an RFC 3339 timestamp with its offset (2026-03-29T02:30:00+02:00), kept as text


def spec(
    default: Any = dataclasses.MISSING,
    *,
    doc: str,
    kind: str | None = None,
    minimum: int | float | None = None,
    maximum: int | float | None = None,
    pattern: str | None = None,
    pattern_hint: str | None = None,
    min_items: int | None = None,
    key_pattern: str | None = None,
    key_pattern_hint: str | None = None,
    why: str | None = None,
    default_factory: Any = dataclasses.MISSING,
    key: str | None = None,
    one_or_many: bool = False,
) -> Any:
    """A dataclass field carrying the rules every consumer of the model reads.

    ``key``: the YAML key when it cannot be the field's name (``from``). ``one_or_many``: a
    list field that also takes a single item (``from: lowly`` = ``from: [lowly]``).
    A dataclass whose class sets ``SHORTHAND = "<field>"`` may be written as that field's
    value alone (``on: echo.done`` = ``on: {event: echo.done}``).
    """
    meta = {
        "doc": doc,
        "kind": kind,
        "minimum": minimum,
        "maximum": maximum,
        "pattern": pattern,
        "pattern_hint": pattern_hint,
        "min_items": min_items,
        "key_pattern": key_pattern,
        "key_pattern_hint": key_pattern_hint,
        "why": why,
        "key": key,
        "one_or_many": one_or_many,
    }
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ServiceConfig:
    name: str = spec("ductile", doc="Service name, used in logs and the posture line.", pattern=NAME)
    max_workers: int = spec(2, doc="Concurrent job slots.", minimum=1, maximum=256)
    unconfined: bool = spec(
        False, doc="The one audited escape from the boot gate: run every plugin at the gateway uid."
    )
    plugin_env_passthrough: tuple[str, ...] = spec(
        (), doc="Extra environment variable names passed into plugins.", pattern=ENV_NAME,
        pattern_hint="an environment variable name such as HTTPS_PROXY",
    )
    max_plugin_output: int = spec(
        4 * 1024 * 1024, doc="Cap on one job's stdout; overflow fails the job.", kind="size",
        minimum=1024, maximum=1024**3,
    )
    max_plugin_state: int = spec(
        1024 * 1024, doc="Cap on one plugin's stored state (its JSON after state_updates are merged); a larger "
        "update fails the job and leaves the state as it was.", kind="size", minimum=1024, maximum=256 * 1024**2,
    )
    kill_grace: float = spec(
        5.0, doc="Time between SIGTERM and SIGKILL when a plugin times out.", kind="duration",
        maximum=600,
    )
    shutdown_timeout: float = spec(
        30.0, doc="On SIGTERM, how long running jobs may finish before they are killed and re-queued.",
        kind="duration", maximum=3600,
    )
    max_event_depth: int = spec(
        4, doc="How many pipeline hops an event chain may take before it is stopped.", minimum=1, maximum=64,
    )
    log_level: Literal["debug", "info", "warning", "error"] = spec("info", doc="Log threshold.")
    # -- containment of each job (SPEC §5.9) --
    containment: Literal["auto", "cgroup", "sweep"] = spec(
        "auto", doc="How a job's processes are ended: a cgroup v2 per job (cgroup), a sweep of the account's "
                    "leftover processes (sweep), or cgroup where a writable cgroup v2 subtree exists (auto).",
    )
    cgroup_root: str | None = spec(
        None, doc="The cgroup v2 directory job cgroups are created under (default: the gateway's own cgroup, "
                  "delegated by systemd's Delegate=yes).", kind="abspath",
    )
    plugin_path: tuple[str, ...] = spec(
        ("/usr/local/bin", "/usr/bin", "/bin"), doc="PATH given to plugins; directories an account cannot "
        "traverse are left out.", kind="abspath",
    )
    # -- Landlock (SPEC §5.10) --
    require_landlock: bool = spec(
        False, doc="Refuse to start when the kernel has no Landlock (otherwise doctor warns and plugins run "
                   "without a filesystem allowlist).",
    )
    # caps on what one plugin answer can set in motion (#11)
    max_events_per_response: int = spec(
        100, doc="Events kept from one plugin answer; the rest are dropped and the job carries a warning.",
        minimum=0, maximum=100_000,
    )
    max_routed_jobs_per_response: int = spec(
        100, doc="Pipeline jobs one plugin answer may start; the rest are not queued and the job carries a warning.",
        minimum=0, maximum=100_000,
    )
    # upstream compatibility (#12)
    dedupe_ttl: float = spec(
        86400.0, doc="A routed job whose event dedupe_key was routed to the same step within this window is not queued.",
        kind="duration", maximum=30 * 86400,
    )


@dataclass(frozen=True)
class RetentionConfig:
    """How long the ledger keeps what finished (#15). null keeps it for good."""

    jobs: float | None = spec(
        30 * 86400.0, doc="Finished jobs (with their attempts and transitions) older than this are pruned; null: "
        "kept for good.", kind="duration", minimum=60,
    )
    events: float | None = spec(
        30 * 86400.0, doc="Events older than this that no kept job refers to are pruned; null: kept for good.",
        kind="duration", minimum=60,
    )
    audit: float | None = spec(
        365 * 86400.0, doc="Vault audit rows older than this are pruned; null: kept for good.", kind="duration",
        minimum=60,
    )
    every: float = spec(
        3600.0, doc="How often serve prunes (in small batches, so the API and workers keep running).",
        kind="duration", minimum=1, maximum=7 * 86400,
    )


@dataclass(frozen=True)
class StateConfig:
    path: str = spec("/var/lib/ductile/ductile.db", doc="The SQLite state database.", kind="path")
    retention: RetentionConfig = spec(default_factory=RetentionConfig, doc="What serve prunes from the ledger, by age.")


@dataclass(frozen=True)
class SecretsConfig:
    age_key_file: str = spec(
        "/etc/ductile/secret/age.key", doc="The age identity that decrypts the vault (mode 0600).", kind="path"
    )
    vault_file: str = spec("/var/lib/ductile/vault.age", doc="The age-encrypted vault.", kind="path")


@dataclass(frozen=True)
class AccountConfig:
    uid: int = spec(
        doc="Numeric uid the plugin drops to; never root.", minimum=1, maximum=UID_MAX,
        why="an account is an unprivileged user, never root",
    )
    gid: int = spec(
        doc="Numeric primary gid; never root.", minimum=1, maximum=UID_MAX,
        why="an account's group is unprivileged, never root",
    )
    state_dir: str = spec(doc="Absolute path of the account's private 0700 directory.", kind="abspath")


@dataclass(frozen=True)
class ScheduleConfig:
    every: float | None = spec(None, doc="Run at this interval.", kind="duration", minimum=1)
    cron: str | None = spec(None, doc="Five-field cron expression (minute hour day month weekday).", kind="cron")
    command: str = spec("poll", doc="Command to run.", pattern=COMMAND_NAME)
    jitter: float = spec(0.0, doc="Random delay up to this long added to each run.", kind="duration")
    payload: dict[str, Any] = spec(default_factory=dict, doc="Payload passed to the plugin.")
    timezone: str | None = spec(
        None, doc="IANA time zone whose wall clock the cron expression, only_between and not_on read (default: the "
        "host's).", kind="timezone",
    )
    # policies (#15)
    at: str | None = spec(None, doc="Run once at this RFC 3339 instant (with its offset).", kind="instant")
    after: float | None = spec(
        None, doc="Run once, this long after a gateway first saw the schedule.", kind="duration", minimum=1,
    )
    catch_up: Literal["skip", "run_once", "run_all"] = spec(
        "run_once", doc="Runs missed while the gateway was down (or busy): skip them, run the latest once, or run "
        "each (at most 24, the latest).",
    )
    if_running: Literal["skip", "queue", "cancel"] = spec(
        "skip", doc="When the schedule's previous job is still queued or running: skip this run, queue it behind, "
        "or cancel the previous job and run.",
    )
    only_between: str | None = spec(
        None, doc="Run only from HH:MM up to (not including) HH:MM on the schedule's wall clock; may wrap midnight "
        "(22:00-06:00).", pattern=ONLY_BETWEEN, pattern_hint="HH:MM-HH:MM, e.g. 08:00-18:00",
    )
    not_on: tuple[str, ...] = spec(
        (), doc="Weekdays the schedule does not run on: mon..sun, or 0-7 as cron counts them (0 and 7: Sunday).",
        pattern=WEEKDAY, pattern_hint="mon, tue, wed, thu, fri, sat, sun, or a quoted digit 0-7",
    )


@dataclass(frozen=True)
class RetryConfig:
    max_attempts: int = spec(4, doc="Attempts before a job is dead.", minimum=1, maximum=100)
    backoff_base: float = spec(30.0, doc="First retry delay; doubles each attempt.", kind="duration")
    backoff_max: float = spec(3600.0, doc="Ceiling on one retry delay.", kind="duration")


@dataclass(frozen=True)
class BreakerConfig:
    """The circuit breaker of a plugin's scheduled runs (#15)."""

    threshold: int = spec(
        3, doc="Consecutive failed scheduled runs that open the breaker (its schedules pause); 0: never.",
        minimum=0, maximum=1000,
    )
    reset_after: float = spec(
        1800.0, doc="How long an open breaker pauses the schedules before one half-open try.", kind="duration",
        minimum=1, maximum=30 * 86400,
    )


@dataclass(frozen=True)
class LimitsConfig:
    memory: int | None = spec(
        None, doc="Memory ceiling per job (cgroup memory.max; RLIMIT_AS where the controller is not delegated).",
        kind="size", minimum=1024 * 1024, maximum=1024**4,
    )
    pids: int | None = spec(
        None, doc="Most processes and threads per job (cgroup pids.max; RLIMIT_NPROC, per account, otherwise).",
        minimum=1, maximum=4_194_304,
    )
    cpu: int | None = spec(
        None, doc="CPU share per job as a percentage of one CPU, e.g. 50% or 200% (cgroup cpu.max only).",
        kind="percent", minimum=1, maximum=100_000,
    )


@dataclass(frozen=True)
class FilesystemConfig:
    read: tuple[str, ...] = spec(
        (), doc="Paths the plugin may read and execute, beyond the default allowlist.", kind="abspath",
    )
    write: tuple[str, ...] = spec(
        (), doc="Paths the plugin may also create, change and remove files in.", kind="abspath",
    )


@dataclass(frozen=True)
class NetworkConfig:
    connect: tuple[int, ...] = spec((), doc="TCP ports the plugin may connect to.", minimum=1, maximum=65535)
    bind: tuple[int, ...] = spec((), doc="TCP ports the plugin may bind (0: an ephemeral port).", minimum=0, maximum=65535)


@dataclass(frozen=True)
class PluginConfig:
    enabled: bool = spec(True, doc="Disabled plugins are never run.")
    run_as: str | None = spec(None, doc="Account grant; must name a defined account.", pattern=ACCOUNT_NAME)
    vault_principal: str | None = spec(
        None, doc="Vault principal (default: the plugin name).", pattern=KEBAB,
        pattern_hint="kebab-case, e.g. my-plugin (lowercase letters, digits, single hyphens)",
    )
    requires_vault: bool = spec(False, doc="Fail the job closed when the principal or vault is missing.")
    schedules: tuple[ScheduleConfig, ...] = spec((), doc="When to run the plugin on its own.")
    timeouts: dict[str, float] = spec(
        default_factory=dict, doc="Per-command timeouts (default poll 60s, handle 120s, health 10s, init 30s, others 60s).",
        kind="duration", minimum=0.01, key_pattern=COMMAND_NAME, key_pattern_hint=COMMAND_NAME_HINT,
    )
    retry: RetryConfig = spec(default_factory=RetryConfig, doc="Retry policy for retryable failures.")
    config: dict[str, Any] = spec(default_factory=dict, doc="Operator settings passed to the plugin as `config`.")
    limits: LimitsConfig | None = spec(None, doc="Per-job resource limits: memory, pids, cpu.")
    filesystem: FilesystemConfig | Literal["unrestricted"] | None = spec(
        None, doc="Paths added to the plugin's Landlock allowlist ({read, write}), or `unrestricted` to run "
                  "without one (logged at WARN).",
    )
    network: NetworkConfig | None = spec(
        None, doc="TCP ports the plugin may connect to and bind (Landlock ABI 4); absent: the network is not "
                  "restricted.",
    )
    breaker: BreakerConfig = spec(
        default_factory=BreakerConfig, doc="Pause the plugin's schedules after consecutive failed scheduled runs.",
    )
    # upstream compatibility (#12)
    parallelism: int | None = spec(
        None, doc="Jobs of this plugin that may run at once (default: no cap, or 1 when its manifest says "
                  "concurrency_safe: false).", minimum=1, maximum=256,
    )


@dataclass(frozen=True)
class PipelineStep:
    uses: str = spec(doc="Plugin that handles the event.", pattern=NAME, pattern_hint=NAME_HINT)
    command: str = spec("handle", doc="Command to run.", pattern=COMMAND_NAME)


@dataclass(frozen=True)
class PipelineOn:
    """What starts a pipeline: an event type, and the plugins whose events count. Without
    ``from`` an event of that type from any plugin starts it (``doctor`` warns when such a
    pipeline runs a write command)."""

    SHORTHAND: ClassVar[str] = "event"
    event: str = spec(doc="Event type (exact, or a prefix ending in .* such as echo.*).", pattern=EVENT_TYPE)
    sources: tuple[str, ...] = spec(
        (), doc="Plugin(s) whose events start the pipeline; one name or a list. Empty: any plugin.",
        pattern=NAME, pattern_hint=NAME_HINT, key="from", one_or_many=True,
    )


@dataclass(frozen=True)
class PipelineConfig:
    name: str = spec(doc="Pipeline name.", pattern=NAME)
    on: PipelineOn = spec(doc="What starts it: an event type (on: echo.done) or {event, from}.")
    steps: tuple[PipelineStep, ...] = spec(doc="Plugins that receive the event.", min_items=1)


@dataclass(frozen=True)
class ApiToken:
    name: str = spec(doc="Token name (shown in logs, never the value).", pattern=NAME)
    secret_ref: str = spec(doc="Vault secret holding the bearer token.", pattern=SECRET_REF)
    scopes: tuple[str, ...] = spec(
        doc="'*', '<plugin>:ro' / '<plugin>:rw', 'system:rw' (POST /system/reload) or 'metrics:ro' (GET /metrics).",
        min_items=1, pattern=rf"^(\*|{NAME_BODY}:(ro|rw))$",
        pattern_hint="'*' or '<plugin>:ro' or '<plugin>:rw' (system:rw, metrics:ro for the gateway's own routes)",
    )


@dataclass(frozen=True)
class ApiConfig:
    enabled: bool = spec(True, doc="Serve the HTTP API.")
    listen: str = spec("127.0.0.1:8080", doc="host:port to listen on.", kind="listen")
    tokens: tuple[ApiToken, ...] = spec((), doc="Bearer tokens, by reference into the vault.")
    max_body: int = spec(1024 * 1024, doc="Largest request body accepted.", kind="size", minimum=1, maximum=64 * 1024**2)
    # a bounded server (#11): an idle-connection flood cannot take it down
    max_connections: int = spec(
        1024, doc="Open connections at most; at the cap the longest-idle one is closed to admit a new one.",
        minimum=8, maximum=1_000_000,
    )
    header_timeout: float = spec(
        10.0, doc="A connection with no complete request for this long (since it opened or its last response) is closed.",
        kind="duration", minimum=1, maximum=600,
    )
    body_timeout: float = spec(
        30.0, doc="A request body not fully received this long after its headers is cut off.",
        kind="duration", minimum=1, maximum=3600,
    )
    keepalive_timeout: float = spec(
        5.0, doc="An idle keep-alive connection that sends nothing for this long is closed.",
        kind="duration", minimum=1, maximum=600,
    )
    metrics: Literal["token", "loopback", "off"] = spec(
        "token", doc="Who may read GET /metrics: a bearer token with the metrics:ro scope (or '*'), any client on "
        "the loopback address without a token, or nobody.",
    )


@dataclass(frozen=True)
class WebhookConfig:
    path: str = spec(doc="URL path, e.g. /hooks/github.", pattern=r"^/[A-Za-z0-9/_.-]*$")
    plugin: str = spec(doc="Plugin that handles the delivery.", pattern=NAME, pattern_hint=NAME_HINT)
    secret_ref: str = spec(doc="Vault secret holding the HMAC key.", pattern=SECRET_REF)
    signature_header: str = spec("X-Hub-Signature-256", doc="Header carrying the HMAC-SHA256.", pattern=HEADER_NAME)
    command: str = spec("handle", doc="Command to run.", pattern=COMMAND_NAME)
    max_body: int = spec(1024 * 1024, doc="Largest body accepted.", kind="size", minimum=1, maximum=64 * 1024**2)
    # replay protection (#11)
    replay_window: float = spec(
        86400.0, doc="How long a delivery id or signed body is remembered; a repeat within it queues nothing. 0s: off.",
        kind="duration", maximum=30 * 86400,
    )
    delivery_header: str | None = spec(
        None, doc="Header carrying the sender's delivery id (default: X-GitHub-Delivery, then X-Request-Id).",
        pattern=HEADER_NAME,
    )


@dataclass(frozen=True)
class Config:
    include: tuple[str, ...] = spec((), doc="Files or directories merged into this one (relative to it).")
    service: ServiceConfig = spec(default_factory=ServiceConfig, doc="The gateway process.")
    state: StateConfig = spec(default_factory=StateConfig, doc="Where jobs and plugin state live.")
    secrets: SecretsConfig = spec(default_factory=SecretsConfig, doc="Secret zero and the vault.")
    plugin_roots: tuple[str, ...] = spec(
        ("/opt/ductile/plugins",), doc="Directories searched for plugin manifests.", kind="path"
    )
    accounts: dict[str, AccountConfig] = spec(
        default_factory=dict, doc="OS accounts plugins drop to; `default` and `untrusted` are tiers.",
        key_pattern=ACCOUNT_NAME, key_pattern_hint=ACCOUNT_NAME_HINT,
    )
    plugins: dict[str, PluginConfig] = spec(
        default_factory=dict, doc="Plugins to run, by name.", key_pattern=NAME, key_pattern_hint=NAME_HINT,
    )
    pipelines: tuple[PipelineConfig, ...] = spec((), doc="Event routing.")
    api: ApiConfig = spec(default_factory=ApiConfig, doc="HTTP API.")
    webhooks: tuple[WebhookConfig, ...] = spec((), doc="Signed inbound webhooks.")

    def timeout_for(self, plugin: str, command: str) -> float:
        pc = self.plugins.get(plugin)
        if pc is not None and command in pc.timeouts:
            return pc.timeouts[command]
        return DEFAULT_TIMEOUTS.get(command, 60.0)


DEFAULT_TIMEOUTS = {"poll": 60.0, "handle": 120.0, "health": 10.0, "init": 30.0}
