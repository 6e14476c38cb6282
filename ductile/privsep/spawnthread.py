"""A throwaway thread for one spawn: whatever it does to its own credentials (a Landlock
domain, ambient capabilities for an exec'd drop) dies with it, and the gateway's other
threads never see it. Landlock restricts only the calling thread; capability sets are per
thread too. The child of a ``Popen`` made in that thread inherits exactly that state.

A bare ``_thread`` and one lock, not ``threading.Thread``: ``Thread.start`` waits until the
new thread has run, and ``join`` waits again; each wait is a GIL hand-off that a busy
gateway pays in latency. Nothing in the thread logs or asks for
``threading.current_thread()`` (which would register a dummy Thread for it)."""

from __future__ import annotations

import _thread
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def in_throwaway_thread(prepare: Sequence[Callable[[], None]], fn: Callable[[], T]) -> T:
    """Run each of ``prepare``, then ``fn`` (a spawn), in a fresh thread; return ``fn``'s
    value or raise its (or a preparation's) exception in the caller."""
    box: dict[str, object] = {}
    done = _thread.allocate_lock()
    done.acquire()

    def run() -> None:
        try:
            for step in prepare:
                step()
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = err
        finally:
            done.release()

    _thread.start_new_thread(run, ())
    done.acquire()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
