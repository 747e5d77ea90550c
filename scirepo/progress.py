"""Progress lines for long operator commands, and waits with backoff and a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable

from scirepo.config import ScirepoError


class NotReady(ScirepoError, TimeoutError):
    """A wait ran past its deadline; the message names what was awaited."""


_T0 = time.monotonic()


def say(text: str) -> None:
    print(f"  [{time.monotonic() - _T0:6.1f}s] {text}", flush=True)


class Steps:
    """Numbered steps: `[2/5] images` so the operator sees which step and how far."""

    def __init__(self, names: list[str]):
        self.names, self.index = names, 0

    def next(self) -> None:
        self.index += 1
        name = self.names[self.index - 1]
        print(f"[{self.index}/{len(self.names)}] {name}", flush=True)


def wait_for(
    what: str,
    check: Callable[[], bool],
    deadline: float = 60.0,
    first: float = 0.2,
    cap: float = 3.0,
) -> None:
    """Poll `check` with exponential backoff until it is true; NotReady after the deadline.

    A ScirepoError raised by `check` is a definite failure and ends the wait at once.
    """
    end, delay = time.monotonic() + deadline, first
    while True:
        try:
            if check():
                return
        except ScirepoError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failing probe is just "not yet"
            last = exc
        else:
            last = None
        if time.monotonic() >= end:
            why = f" (last error: {last})" if last else ""
            raise NotReady(f"{what} not ready after {deadline:.0f} s{why}")
        time.sleep(delay)
        delay = min(delay * 1.6, cap)
