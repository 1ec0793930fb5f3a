"""A circuit breaker per sandlot server: stop calling a server that keeps failing.

Closed, it counts consecutive failures (no answer, or a 5xx); at ``FAILURES`` it opens. A 429
or 503 opens it at once, for the longer cooldown (the server said it is overloaded or going
away). Open, calls fail at once with :class:`RemoteUnavailableError`. After the cooldown it
is half-open: one probe goes through; its success closes the breaker, its failure opens it
again. Breakers are shared by every client of the same URL in the process.
"""

from __future__ import annotations

import threading
import time
from typing import Literal

from ..errors import RemoteUnavailableError

FAILURES = 5
COOLDOWN = 5.0  # seconds open after repeated failures
OVERLOAD_COOLDOWN = 30.0  # seconds open after a 429 or 503
State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(
        self,
        url: str,
        failures: int = FAILURES,
        cooldown: float = COOLDOWN,
        overload_cooldown: float = OVERLOAD_COOLDOWN,
    ) -> None:
        self.url = url
        self.threshold = failures
        self.cooldown = cooldown
        self.overload_cooldown = overload_cooldown
        self._lock = threading.Lock()  # the sync SDK and a server may share one
        self._failures = 0
        self._opened_until = 0.0
        self._open = False
        self._probing = False
        self.last_error = ""

    @property
    def state(self) -> State:
        with self._lock:
            if not self._open:
                return "closed"
            return "half_open" if time.monotonic() >= self._opened_until else "open"

    def before(self) -> None:
        """Raise if the breaker is open; in half-open state let exactly one probe through."""
        with self._lock:
            if not self._open:
                return
            wait = self._opened_until - time.monotonic()
            if wait <= 0 and not self._probing:
                self._probing = True
                return
        raise RemoteUnavailableError(
            f"the sandlot server at {self.url} is failing ({self.last_error}); not calling it "
            f"for another {max(wait, 0):.1f} s",
            url=self.url,
            breaker="open",
        )

    def success(self) -> None:
        with self._lock:
            self._failures = 0
            self._open = False
            self._probing = False

    def failure(self, reason: str, overloaded: bool = False) -> None:
        with self._lock:
            self.last_error = reason
            self._failures += 1
            if overloaded or self._probing or self._failures >= self.threshold:
                self._open = True
                self._probing = False
                pause = self.overload_cooldown if overloaded else self.cooldown
                self._opened_until = time.monotonic() + pause


_breakers: dict[str, CircuitBreaker] = {}
_registry_lock = threading.Lock()


def breaker_for(url: str) -> CircuitBreaker:
    with _registry_lock:
        found = _breakers.get(url)
        if found is None:
            found = _breakers[url] = CircuitBreaker(url)
        return found


def states() -> dict[str, str]:
    """Every breaker of this process, by URL (for ``/healthz``)."""
    with _registry_lock:
        return {url: breaker.state for url, breaker in _breakers.items()}
