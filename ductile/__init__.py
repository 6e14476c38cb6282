"""ductile: a privilege-separated automation gateway.

The library is pure decisions over plain data (``ductile.config``, ``ductile.privsep``)
plus a few small edge modules that touch the OS. ``commands/`` (import name
``ductile_commands``) holds the click nouns that render what the library returns.
"""

__version__ = "0.1.0"
