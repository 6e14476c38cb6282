"""``ductile serve`` end to end: (demo) -> boot -> logging -> posture line -> run -> drain."""

from __future__ import annotations

import logging

from ductile.runtime.wiring import record_boot
from ductile.serve import logs
from ductile.serve.bootseq import boot_serve
from ductile.serve.gateway import run

_log = logging.getLogger("ductile.serve")


def run_serve(config_path: str | None, *, demo_dir: str | None = None, show_token: bool = False) -> int:
    if demo_dir is not None:
        from ductile.serve.demo import prepare_demo

        config_path = prepare_demo(demo_dir, show_token=show_token)
    booted = boot_serve(config_path)  # a refusal raises here: one line on stderr, nothing ran
    cfg = booted.runtime.config
    redactor = logs.setup(cfg.service.log_level)
    redactor.add(booted.secrets.values())
    verdict = booted.runtime.assessment.verdict
    logs.log(_log, logging.WARNING if verdict.level == "warning" else logging.INFO, booted.runtime.posture_line(),
             posture=verdict.posture, cell=verdict.cell, gateway_uid=booted.runtime.assessment.gateway_uid,
             config=booted.loaded.path)
    levels = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
    for level, line in booted.runtime.notes():
        logs.log(_log, levels[level], line)
    record_boot(booted.runtime, booted.db)
    rt = booted.runtime
    if rt.containment is not None:
        for path, held in rt.containment.stale:
            logs.log(_log, logging.WARNING, f"removed the job cgroup {path} of a gateway that is gone ({held} process(es) killed)",
                     cgroup=path, killed=held)
    for account, n in booted.swept:
        if n:
            logs.log(_log, logging.WARNING, f"boot sweep: killed {n} leftover process(es) of account {account}",
                     account=account, killed=n)
        elif n is None:
            logs.log(_log, logging.INFO, f"boot sweep: account {account} has a job running elsewhere; not swept",
                     account=account)
    for job_id, status in booted.recovered:
        logs.log(_log, logging.WARNING, f"job {job_id} was running when the last gateway stopped; now {status}",
                 job_id=job_id, status=status)
    return run(booted, redactor)
