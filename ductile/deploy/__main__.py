"""``python -m ductile.deploy ARTEFACT CONFIG CONFIG_DIR GATEWAY_USER``: render one artefact
with nothing but the standard library and PyYAML.

deploy/install.sh renders from the operator's config *before* it writes anything (the ids
in the result are checked first), so before this package is installed anywhere: it runs
this module from a copy of the checkout on ``PYTHONPATH``. The operator's command is
``ductile deploy render``; both call ``render_config``. Errors are one line on stderr.
"""

from __future__ import annotations

import sys

from ductile.deploy import ARTEFACTS, render_config
from ductile.errors import DuctileError


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] not in ARTEFACTS:
        print(f"usage: python -m ductile.deploy {{{'|'.join(ARTEFACTS)}}} CONFIG CONFIG_DIR GATEWAY_USER", file=sys.stderr)
        return 2
    artefact, config, config_dir, user = argv
    try:
        text, _, _ = render_config(artefact, config, gateway_user=user, config_dir=config_dir)
    except DuctileError as err:
        print(err.one_line(), file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
