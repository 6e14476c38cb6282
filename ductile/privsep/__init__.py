"""Privilege separation. Pure modules decide (caps parsing, gate, accounts, env, spawn
spec, reconcile plan); ``kernel`` and ``fsapply`` are the only modules here that touch the OS."""
