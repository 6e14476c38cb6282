"""Credential building: everything the spawn edge needs, decided here as plain data (SPEC §5.5).

Every plugin is exec'd through a small ``/bin/sh`` trampoline, started in a new session
(``launch.py``):

    /bin/sh -c <script> ductile-spawn <workdir> <entrypoint>

The script first blocks on ``read -r go``. The shell reads stdin one byte at a time, so
nothing past ``go\\n`` is consumed: meanwhile the gateway moves the process into the job's
cgroup, and only then writes ``go\\n`` followed by the request. A plugin that forks as its
first instruction is already contained. Then the script lowers the job's rlimits
(``ulimit``: no ``preexec_fn``, no Python between fork and exec), changes into the working
directory *as the account* (CPython's ``Popen(cwd=)`` would chdir before the drop: a
cap-only gateway cannot enter an account's 0700 directory, and a root gateway would hide
an untraversable parent), makes the private ``tmp/`` when it is missing, and execs the
entrypoint with no extra argv.

Each step that can fail exits with its own status and a ``ductile-spawn:`` line on stderr,
so ``outcome.trampoline_failure`` can tell a refused drop, an unreachable state_dir and an
entrypoint the account cannot execute apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ductile.config.model import ServiceConfig
from ductile.privsep.accounts import ResolvedAccount
from ductile.privsep.env import FALLBACK_PATH, PRIVATE_TMP, build_env
from ductile.privsep.landlock import Ruleset

TRAMPOLINE = "/bin/sh"
TRAMPOLINE_NAME = "ductile-spawn"   # the trampoline's $0: every line it (or sh) prints starts with it
# the trampoline's first words, on stderr: it runs, as whoever it was dropped to, and waits
# for "go"; the gateway checks that drop before it answers (runtime.spawn)
TRAMPOLINE_READY = f"{TRAMPOLINE_NAME}: ready\n".encode()
STDERR_TAIL = 64 * 1024
UMASK = 0o077

# exit statuses of the trampoline, before the plugin runs
EXIT_HANDSHAKE = 121   # stdin closed before "go": the gateway gave up on this spawn
EXIT_LIMIT = 122       # an rlimit could not be set
EXIT_TMPDIR = 123      # the private TMPDIR could not be made
EXIT_WORKDIR = 125     # cd into the state_dir failed (as the account)
EXIT_NOEXEC = 126      # sh: the entrypoint (or its #! interpreter) is not executable
EXIT_NOTFOUND = 127    # sh: the entrypoint (or its #! interpreter) does not exist

# ulimit's flag per rlimit; NPROC is -u in bash/ksh/zsh and -p in dash/busybox: try both
_ULIMIT = {"core": ("-c",), "as": ("-v",), "nproc": ("-u", "-p")}
RLIMIT_LABEL = {"core": "RLIMIT_CORE", "as": "RLIMIT_AS", "nproc": "RLIMIT_NPROC"}


def _fail(code: int, text: str) -> str:
    return f"{{ printf '%s\\n' \"{TRAMPOLINE_NAME}: {text}\" >&2; exit {code}; }}"


def trampoline_script(rlimits: tuple[tuple[str, int], ...]) -> str:
    """The shell program, with the job's rlimits (integers only) written in."""
    lines = [f"printf '%s\\n' '{TRAMPOLINE_READY.decode().strip()}' >&2",
             f'read -r go && [ "$go" = go ] || exit {EXIT_HANDSHAKE}']
    for name, value in rlimits:
        arg = str(value // 1024 if name == "as" else int(value))  # ulimit -v counts KiB
        tries = " || ".join(f"ulimit {flag} {arg} 2>/dev/null" for flag in _ULIMIT[name])
        lines.append(f"{tries} || " + _fail(EXIT_LIMIT, f"cannot set {RLIMIT_LABEL[name]} to {arg}"))
    lines += [
        'cd -- "$1" 2>/dev/null || ' + _fail(EXIT_WORKDIR, "cannot enter the working directory $1"),
        # two jobs of one account may race to make it: whoever loses finds it made
        f"[ -d {PRIVATE_TMP} ] || mkdir -m 0700 {PRIVATE_TMP} 2>/dev/null || [ -d {PRIVATE_TMP} ] || "
        + _fail(EXIT_TMPDIR, f"cannot create the private TMPDIR $1/{PRIVATE_TMP}"),
        "unset OLDPWD PWD",  # cd sets them; the environment stays the allowlist
        "shift",
        'exec "$@"',
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class Confinement:
    """What encloses one job beyond the drop, decided before the spawn (SPEC §5.9, §5.10)
    and carried out by the spawn edge. The default encloses nothing but the session."""

    path: str = FALLBACK_PATH                          # PATH for the plugin
    cgroup_parent: str | None = None                   # cgroup mode: the gateway's instance directory
    cgroup_files: tuple[tuple[str, str], ...] = ()     # limits written into the job cgroup
    rlimits: tuple[tuple[str, int], ...] = (("core", 0),)
    lock_path: str | None = None                       # the account's lock, held shared while the job runs
    landlock: Ruleset | None = None                    # applied by the spawn edge before exec
    limits: dict[str, str] = field(default_factory=dict)  # limit -> what enforces it, for reports

    @property
    def mode(self) -> str:
        return "cgroup" if self.cgroup_parent else "sweep"


@dataclass(frozen=True)
class SpawnSpec:
    argv: tuple[str, ...]
    env: dict[str, str] = field(repr=False)
    entrypoint: str
    workdir: str                 # where the plugin runs (its HOME when confined)
    uid: int | None              # None: no drop (unconfined)
    gid: int | None
    groups: tuple[int, ...]      # supplementary groups after the drop: always empty
    umask: int
    timeout: float
    kill_grace: float
    max_stdout: int
    stderr_tail: int
    account: str | None
    confinement: Confinement = field(default_factory=Confinement)

    @property
    def drops(self) -> bool:
        return self.uid is not None


def build_spawn_spec(resolved: ResolvedAccount, entrypoint: str, service: ServiceConfig,
                     gateway_env: Mapping[str, str], *, timeout: float, unconfined_workdir: str,
                     gateway_uid: int | None = None, program: tuple[str, ...] | None = None,
                     confinement: Confinement | None = None) -> SpawnSpec:
    """The one place a plugin's credentials, argv, env and limits are decided.

    ``program`` replaces the bare entrypoint for ductile's own probes (interpreter + script);
    plugins are always exec'd as their entrypoint alone.
    """
    resolved.validate(gateway_uid)
    conf = confinement or Confinement()
    command = program or (entrypoint,)
    workdir = resolved.state_dir if resolved.confined else unconfined_workdir
    assert workdir is not None  # validate() guarantees a confined state_dir
    return SpawnSpec(
        argv=(TRAMPOLINE, "-c", trampoline_script(conf.rlimits), TRAMPOLINE_NAME, workdir, *command),
        env=build_env(gateway_env, service.plugin_env_passthrough, workdir, conf.path),
        entrypoint=entrypoint, workdir=workdir, uid=resolved.uid, gid=resolved.gid, groups=(), umask=UMASK,
        timeout=timeout, kill_grace=service.kill_grace, max_stdout=service.max_plugin_output,
        stderr_tail=STDERR_TAIL, account=resolved.name if resolved.confined else None, confinement=conf,
    )
