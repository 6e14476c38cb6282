"""ductile's built-in nouns; each module is one click command registered as an entry point."""
