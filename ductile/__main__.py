"""``python -m ductile`` is the same program as the ``ductile`` console script."""

from ductile.cli import main

if __name__ == "__main__":
    main(prog_name="ductile")
