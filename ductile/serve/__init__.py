"""``ductile serve``: the gateway daemon.

Pure decisions (``settle``, ``pipelines``, ``ticks``, ``scopes``, ``signatures``) sit beside
the small parts that act: ``dispatcher`` (workers around the one Executor), ``scheduler``,
``api``/``webhooks`` (HTTP), ``bootseq`` (SPEC §8 boot order), ``gateway`` (run + drain),
and the OS edges ``instance`` (single-instance lock), ``notify`` (sd_notify), ``logs``.
"""
