"""Run a small helper *as an account*, through the one spawn path (SPEC §5.6, §5.7).

A cap-only gateway holds CAP_SETUID+CAP_SETGID and nothing else: it cannot chmod a
directory it does not own. When a plugin loosens its own state_dir (``chmod 0755 $HOME``),
the account that did it can undo it, and nobody else needs to: the reconcile asks for a
``chmod`` dropped to that account, exactly as the kill helper in ``spawn`` signals a
plugin's group as the plugin's own uid. Whatever the helper touches, the account could
have touched anyway — it borrows no power from the gateway.
"""

from __future__ import annotations

from ductile.config import Config
from ductile.errors import DuctileError
from ductile.privsep.accounts import account
from ductile.privsep.reconcile import Action
from ductile.privsep.spawnspec import build_spawn_spec
from ductile.runtime.spawn import spawn

CHMOD = "/bin/chmod"
HELPER_TIMEOUT = 10.0
HELPER_ENV = {"PATH": "/usr/bin:/bin"}


class HelperFailed(DuctileError):
    kind = "helper_failed"


class ChmodHelper:
    """``fsapply``'s ``as_account`` callback: ``chmod MODE -- PATH`` as ``action.scope``."""

    def __init__(self, config: Config, gateway_uid: int) -> None:
        self.config = config
        self.gateway_uid = gateway_uid

    def __call__(self, action: Action) -> None:
        if action.op != "chmod" or action.mode is None or action.scope is None:
            raise HelperFailed(f"no helper for {action.describe()}")
        resolved = account(self.config, action.scope, "granted")
        argv = (CHMOD, f"{action.mode:04o}", "--", action.path)
        spec = build_spawn_spec(resolved, CHMOD, self.config.service, HELPER_ENV, timeout=HELPER_TIMEOUT,
                                unconfined_workdir="/", gateway_uid=self.gateway_uid, program=argv)
        raw = spawn(spec, b"")
        if raw.returncode != 0 or raw.timed_out:
            said = raw.stderr_tail.decode("utf-8", "replace").strip().splitlines()
            raise HelperFailed(said[-1] if said else f"exit status {raw.returncode}")
