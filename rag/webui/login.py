"""Password guessing on the page, limited per client address across every browser session (issue 17 #12).

A session that types a wrong password waits ``delay_s`` before it may try again, but parallel sessions (new tabs, a
script opening many websocket sessions) are not slowed by that. :class:`LoginThrottle` counts failures per client
address in this process: after ``max_failures`` within ``window_s`` the address is locked out for ``lockout_s``,
even with the right password. Behind a reverse proxy every client has the proxy's address: then one guesser
locks everyone out for ``lockout_s``, which is the safe side. Pure Python (no Streamlit): tests pass a fake clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_FAILURES = 5
WINDOW_S = 300.0
LOCKOUT_S = 300.0
MAX_ADDRESSES = 10_000  # failures remembered at most for this many addresses (the oldest are forgotten first)


@dataclass
class _Record:
    failures: list[float] = field(default_factory=list)  # times of the recent failures
    locked_until: float = 0.0


class LoginThrottle:
    """Failed password attempts per client address, shared by every session of the process.

    Args:
        max_failures: failures within ``window_s`` that lock an address out.
        window_s: how long a failure counts.
        lockout_s: how long a locked-out address is refused.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, max_failures: int = MAX_FAILURES, window_s: float = WINDOW_S, lockout_s: float = LOCKOUT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_failures < 1:
            raise ValueError(f"max_failures={max_failures} must be at least 1")
        self.max_failures, self.window_s, self.lockout_s = max_failures, window_s, lockout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}  # insertion order = oldest first

    def locked_for(self, address: str) -> float:
        """Seconds left of ``address``'s lock-out (0.0 when it may try)."""
        with self._lock:
            record = self._records.get(address)
            return max(0.0, record.locked_until - self._clock()) if record else 0.0

    def failed(self, address: str) -> float:
        """Count a wrong password from ``address``; returns the lock-out it starts (0.0 when none)."""
        now = self._clock()
        with self._lock:
            record = self._records.pop(address, None) or _Record()
            self._records[address] = record  # now the newest
            record.failures = [t for t in record.failures if now - t < self.window_s] + [now]
            if len(record.failures) >= self.max_failures:
                record.failures.clear()
                record.locked_until = now + self.lockout_s
            self._forget_old(now)
            return max(0.0, record.locked_until - now)

    def succeeded(self, address: str) -> None:
        """The right password: forget ``address``'s failures."""
        with self._lock:
            self._records.pop(address, None)

    def _forget_old(self, now: float) -> None:
        """Drop addresses with nothing left to remember, then the oldest beyond ``MAX_ADDRESSES``, unlocked ones first
        (lock held)."""
        if len(self._records) <= MAX_ADDRESSES:
            return
        for address, record in list(self._records.items()):
            if record.locked_until <= now and all(now - t >= self.window_s for t in record.failures):
                del self._records[address]
        unlocked = [address for address, record in self._records.items() if record.locked_until <= now]
        for address in unlocked[:max(0, len(self._records) - MAX_ADDRESSES)]:  # a lock-out is kept longest
            del self._records[address]
        while len(self._records) > MAX_ADDRESSES:
            del self._records[next(iter(self._records))]
