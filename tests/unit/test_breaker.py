"""The circuit breaker's state machine, on its own (clock: real, cooldowns short)."""

from __future__ import annotations

import time

import pytest

from sandlot.errors import RemoteUnavailableError
from sandlot.remote.breaker import CircuitBreaker, breaker_for, states


def test_five_failures_open_it_and_a_probe_after_the_cooldown_closes_it() -> None:
    breaker = CircuitBreaker("http://x", failures=5, cooldown=0.2)
    for _ in range(4):
        breaker.before()
        breaker.failure("no answer")
    assert breaker.state == "closed"
    breaker.before()
    breaker.failure("no answer")
    assert breaker.state == "open"
    with pytest.raises(RemoteUnavailableError, match="no answer"):
        breaker.before()
    time.sleep(0.25)
    assert breaker.state == "half_open"
    breaker.before()  # the one probe
    with pytest.raises(RemoteUnavailableError):
        breaker.before()  # no second probe while the first is out
    breaker.success()
    assert breaker.state == "closed"
    breaker.before()


def test_a_failed_probe_opens_it_again() -> None:
    breaker = CircuitBreaker("http://x", failures=1, cooldown=0.1)
    breaker.failure("refused")
    time.sleep(0.15)
    breaker.before()
    breaker.failure("refused again")
    assert breaker.state == "open"
    with pytest.raises(RemoteUnavailableError, match="refused again"):
        breaker.before()


def test_overload_opens_it_at_once_for_longer() -> None:
    breaker = CircuitBreaker("http://x", failures=5, cooldown=0.1, overload_cooldown=0.4)
    breaker.failure("it answered 503", overloaded=True)
    assert breaker.state == "open"
    time.sleep(0.2)
    assert breaker.state == "open"  # past the short cooldown, not the long one
    time.sleep(0.3)
    assert breaker.state == "half_open"


def test_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker("http://x", failures=3)
    for _ in range(10):
        breaker.failure("flaky")
        breaker.failure("flaky")
        breaker.success()
    assert breaker.state == "closed"


def test_breakers_are_shared_per_url() -> None:
    assert breaker_for("http://shared:1") is breaker_for("http://shared:1")
    assert states()["http://shared:1"] == "closed"
