"""Two gateways to judge: this shell, and the one its systemd unit will start.

An operator runs ``doctor`` or ``account explain`` from a shell (root, or the gateway user
through ``runuser``). That shell rarely holds what the unit grants: ``runuser`` gives no
capabilities, root gives all of them and can chown. Judging the shell would report a
refusal on a correct host, or promise a plan only root could carry out. So the posture
is predicted twice through the same pure steps (``assess``): once for this process, and
once for the unit that runs this config (its User= and its capabilities), when one is
installed. The unit's verdict is the one that counts; the shell's is reported beside it
when it differs, never instead of it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ductile.config import LoadedConfig
from ductile.deploy.installed import resolve_identity, unit_dirs, units_running
from ductile.deploy.unitfile import UnitFacts
from ductile.runtime.boot import Assessment, assess

AS_UNIT_ENV = "DUCTILE_AS_UNIT"  # set by --as-unit in the re-executed command: display only


@dataclass(frozen=True)
class UnitView:
    facts: UnitFacts
    assessment: Assessment | None   # None when the unit's User= cannot be resolved here
    problem: str = ""


@dataclass(frozen=True)
class PostureView:
    shell: Assessment
    unit: UnitView | None
    others: tuple[UnitFacts, ...] = ()     # further units that start the same config
    searched: tuple[str, ...] = ()
    as_unit: str = ""                       # this process was started by --as-unit for that unit

    @property
    def effective(self) -> Assessment:
        """The gateway that will really run: the unit's when known, else this shell's."""
        if self.unit is not None and self.unit.assessment is not None:
            return self.unit.assessment
        return self.shell

    @property
    def under_unit(self) -> bool:
        return self.unit is not None and self.unit.assessment is not None

    @property
    def where(self) -> str:
        if self.under_unit:
            assert self.unit is not None
            return f"under {self.unit.facts.name}"
        return f"as {self.as_unit} would run it" if self.as_unit else "in this shell"

    def shell_label(self) -> str:
        a = self.shell
        cap = "holds CAP_SETUID+CAP_SETGID" if a.capability else "lacks CAP_SETUID+CAP_SETGID"
        who = "root" if a.gateway_uid == 0 else f"uid {a.gateway_uid}"
        return f"this shell ({who}) {cap}"

    def shell_differs(self) -> bool:
        """Does this shell land in another gate cell, or run as another uid, than the unit?"""
        if not self.under_unit or self.as_unit:
            return False
        u = self.effective
        return (u.verdict.cell, u.gateway_uid) != (self.shell.verdict.cell, self.shell.gateway_uid)


def assess_posture(loaded: LoadedConfig, env: Mapping[str, str] | None = None,
                   shell: Assessment | None = None) -> PostureView:
    """This shell's assessment and, when a unit runs this config, the unit's."""
    env = os.environ if env is None else env
    shell = shell or assess(loaded)
    units = units_running(loaded.directory, loaded.path, env)
    as_unit = env.get(AS_UNIT_ENV, "")
    if not units:
        return PostureView(shell, None, searched=unit_dirs(env), as_unit=as_unit)
    facts = units[0]
    ident = resolve_identity(facts)
    if ident.uid is None:
        view = UnitView(facts, None, ident.problem)
    else:
        view = UnitView(facts, assess(loaded, capability=facts.can_drop,
                                      gateway_uid=0 if facts.runs_as_root else ident.uid))
    return PostureView(shell, view, tuple(units[1:]), unit_dirs(env), as_unit)
