"""A daemon thread that calls one function every N seconds until stopped: the shape the
scheduler and the maintenance timer share."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Periodic:
    def __init__(self, name: str, every: float, run: Callable[[], object], *, first_now: bool) -> None:
        self.name = name
        self.every = every
        self.run = run
        self.first_now = first_now  # run once at start (scheduler) or only after the first interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        if self.first_now:
            self.run()
        while not self._stop.wait(self.every):
            self.run()
