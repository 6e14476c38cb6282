#!/usr/bin/env python3
"""Start-up: ``ductile --help``, ``ductile doctor`` and ``ductile plugin list`` against
``python -c pass``, side by side.

    .venv/bin/python bench/startup.py [RUNS]

Each command runs RUNS times (default 15), the commands alternating within each round, and
the medians are printed with the ratio to a bare interpreter start. doctor and plugin list
read the shipped example config (examples/); they are reported beside --help, which is the
one with a goal (<= 2.5x).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import alternate, machine, median, table  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def timed(argv: list[str]) -> float:
    env = {**os.environ, "NO_COLOR": "1"}
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
    return time.perf_counter() - start


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 15
    ductile = str(BIN / "ductile")
    example = str(REPO / "examples" / "etc")
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "ductile --help": [ductile, "--help"],
        "ductile doctor (example config)": [ductile, "doctor", "--config", example],
        "ductile plugin list (example config)": [ductile, "plugin", "list", "--config", example],
    }
    samples = alternate(runs, {name: (lambda argv=argv: timed(argv)) for name, argv in commands.items()})
    base = median(samples["python -c pass"])
    rows = [[name, f"{median(v) * 1000:.1f}", f"{median(v) / base:.2f}"] for name, v in samples.items()]
    table(f"start-up (median of {runs}, alternated)", ["command", "ms", "x python -c pass"], rows)
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
