"""doctor: collect findings from every part of ductile into one report.

Each section is a function ``LoadedConfig -> list[Finding]``; doctor runs them in order and
never changes anything on disk. Sections that need facts from the OS gather them through
the same edge modules the gateway uses.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ductile.config import LoadedConfig, inspect_config
from ductile.findings import Finding, exit_code, sort_findings
from ductile.interpreter import refuse_unsafe_python
from ductile.plugins.inventory import plugin_findings
from ductile.privsep import dropper, dropper_host

Section = Callable[[LoadedConfig], list[Finding]]


@dataclass(frozen=True)
class DoctorReport:
    config_path: str | None
    findings: tuple[Finding, ...]

    def exit_code(self, fail_on_warnings: bool) -> int:
        return exit_code(list(self.findings), fail_on_warnings)

    def as_dict(self) -> dict[str, object]:
        counts = {s: sum(1 for f in self.findings if f.severity == s) for s in ("error", "warning", "info")}
        return {"config": self.config_path, "ok": counts["error"] == 0, "counts": counts,
                "findings": [f.as_dict() for f in self.findings]}


def python_findings() -> list[Finding]:
    refusal = refuse_unsafe_python(tuple(sys.version_info[:3]), sys.implementation.name)
    if refusal:
        return [Finding("error", "host", "python", refusal.message, refusal.fix, refusal.where)]
    return []


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path) and path not in ("", "/"):
        path = os.path.dirname(path)
    return path or "/"


def host_findings(loaded: LoadedConfig) -> list[Finding]:
    cfg = loaded.config
    out: list[Finding] = []
    for i, root in enumerate(cfg.plugin_roots):
        field = f"plugin_roots[{i}]"
        if not os.path.isdir(root):
            out.append(Finding("error", "host", field, f"plugin root {root} does not exist or is not a directory",
                               "create it (root-owned, 0755) or fix the path", loaded.where(field)))
    state_dir = os.path.dirname(cfg.state.path)
    if os.path.isdir(state_dir):
        if not os.access(state_dir, os.W_OK | os.X_OK):
            out.append(Finding("error", "host", "state.path", f"state directory {state_dir} is not writable by uid {os.geteuid()}",
                               "run ductile as the account that owns it, or fix its owner", loaded.where("state.path")))
    else:
        anchor = _nearest_existing(state_dir)
        if os.access(anchor, os.W_OK | os.X_OK):
            out.append(Finding("info", "host", "state.path", f"state directory {state_dir} will be created on first start",
                               "", loaded.where("state.path")))
        else:
            out.append(Finding("error", "host", "state.path",
                               f"state directory {state_dir} does not exist and {anchor} is not writable by uid {os.geteuid()}",
                               f"create {state_dir} owned by the gateway account (install -d -m 0700)", loaded.where("state.path")))
    out += drop_findings(loaded)
    return out


def drop_findings(loaded: LoadedConfig) -> list[Finding]:
    """How jobs will be dropped (``privsep.dropper``): through capsh or setpriv after
    ``exec``, or in the forked gateway, which is as safe and slower. Told only where there
    are accounts to drop to."""
    cfg = loaded.config
    if not cfg.accounts:
        return []
    host = dropper_host.host_dropper()
    if host.path is None:
        return [Finding("info", "host", "accounts", f"jobs are dropped in the forked gateway, not through capsh or "
                        f"setpriv ({host.why_not}): as safe, about 2 ms of CPU more per job",
                        "install libcap's capsh (or util-linux's setpriv), root-owned", loaded.where("accounts"))]
    unsafe = dropper.unsafe_env({name: "" for name in cfg.service.plugin_env_passthrough})
    if unsafe:
        return [Finding("info", "host", "service.plugin_env_passthrough",
                        f"passes {', '.join(unsafe)}, which a program holding the gateway's capabilities must not see: "
                        f"jobs are dropped in the forked gateway, not through {host.path}",
                        "pass such names only if a plugin needs them", loaded.where("service.plugin_env_passthrough"))]
    return [Finding("info", "host", "accounts", f"jobs are dropped through {host.path} after exec, and the drop is "
                    "checked from /proc before the plugin starts", "", loaded.where("accounts"))]


def schedule_findings(loaded: LoadedConfig) -> list[Finding]:
    """Which wall clock each schedule reads (cron, only_between, not_on): its own
    ``timezone:``, or the host's zone, named, so a server in UTC is not a surprise."""
    from ductile.serve.ticks import host_zone_name

    out: list[Finding] = []
    host = host_zone_name()
    for name, pc in sorted(loaded.config.plugins.items()):
        for i, sc in enumerate(pc.schedules):
            if sc.cron is None and sc.only_between is None and not sc.not_on:
                continue
            field = f"plugins.{name}.schedules[{i}]"
            what = ", ".join(k for k, v in (("cron", sc.cron), ("only_between", sc.only_between),
                                           ("not_on", sc.not_on)) if v)
            if sc.timezone:
                text = f"{what} read(s) the wall clock of {sc.timezone} (timezone:)"
                fix = ""
            else:
                text = f"{what} read(s) the host's zone, {host} (no timezone: set)"
                fix = f"set timezone: (e.g. timezone: {host if '/' in host else 'Europe/Berlin'}) to pin it"
            out.append(Finding("info", "schedule", field, text, fix, loaded.where(field)))
    return out


def sections() -> list[Section]:
    """The doctor sections, in report order. Later layers append theirs here."""
    from ductile.runtime.doctor import containment_findings, landlock_section, posture_findings
    from ductile.vault.doctor import vault_findings  # imports pyrage: only when doctor runs

    return [host_findings, plugin_findings, schedule_findings, posture_findings, containment_findings, landlock_section,
            vault_findings]


def strictly(findings: list[Finding]) -> list[Finding]:
    """``--strict``: a side-door warning is a refusal."""
    return [Finding("error", f.category, f.field, f.message + " (--strict)", f.fix, f.where)
            if f.category == "sidedoor" and f.severity == "warning" else f for f in findings]


def run_doctor(config: str | None, env: Mapping[str, str] | None = None, *, strict: bool = False) -> DoctorReport:
    loaded, findings = inspect_config(config, env=env)
    findings = python_findings() + findings
    if loaded is not None:
        for section in sections():
            findings += section(loaded)
    if strict:
        findings = strictly(findings)
    return DoctorReport(loaded.path if loaded else None, tuple(sort_findings(findings)))
