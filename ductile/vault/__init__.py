"""The age vault: secret zero's file, its document, and who may read which secret.

Pure modules (``document``, ``ops``, ``compose``, ``refs``, ``intake``) decide; edge modules
(``keyfile``, ``store``) touch the disk; ``lifecycle`` joins them with the audit sink for the
commands and the executor. Nothing is imported here so ``ductile.vault.compose`` stays free of
pyrage and the filesystem.
"""
