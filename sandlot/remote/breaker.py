"""A circuit breaker: stop calling a sandlot server that keeps failing, so that a fallback
takes over at once.

Closed, it counts consecutive failures (no answer, or a 5xx); at ``FAILURES`` it opens. A 429
or 503 opens it at once, for the longer cooldown (the server said it is overloaded or going
away). Open, calls fail at once with :class:`RemoteUnavailableError`. After the cooldown it
is half-open: one probe goes through; its success closes the breaker, its failure opens it
again.

A breaker only makes sense where something else can be done meanwhile: a
:class:`~sandlot.remote.Client` has none unless given one (the remote provider gives its
clients one when a ``fallback`` is configured), and retries instead. A breaker belongs to the
client it was given to; :func:`breaker_for` is the process's shared one for a URL, for users
who want several clients to trip together.
"""

from __future__ import annotations

import threading
import time
import weakref
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
        failures: int | None = None,
        cooldown: float | None = None,
        overload_cooldown: float | None = None,
    ) -> None:
        self.url = url
        self.threshold = FAILURES if failures is None else failures
        self.cooldown = COOLDOWN if cooldown is None else cooldown
        self.overload_cooldown = (
            OVERLOAD_COOLDOWN if overload_cooldown is None else overload_cooldown
        )
        self._lock = threading.Lock()  # the sync SDK and a server may share one
        self._failures = 0
        self._opened_until = 0.0
        self._open = False
        self._probing = False
        self.last_error = ""
        with _registry_lock:
            _live.add(self)

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


_shared: dict[str, CircuitBreaker] = {}
_live: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()  # every breaker in use
_registry_lock = threading.Lock()
_WORST: dict[str, int] = {"closed": 0, "half_open": 1, "open": 2}


def breaker_for(url: str) -> CircuitBreaker:
    """The process's shared breaker for ``url``: pass it as ``Client(breaker=...)`` to every
    client that should stop calling that server together."""
    with _registry_lock:
        found = _shared.get(url)
    if found is None:
        made = CircuitBreaker(url)
        with _registry_lock:
            found = _shared.setdefault(url, made)
    return found


def states() -> dict[str, str]:
    """The breakers in use in this process, by URL; the worst state where several call the
    same server (for ``/healthz``)."""
    with _registry_lock:
        breakers = list(_live)
    found: dict[str, str] = {}
    for breaker in breakers:
        state = breaker.state
        if _WORST[state] >= _WORST[found.get(breaker.url, "closed")]:
            found[breaker.url] = state
    return found
