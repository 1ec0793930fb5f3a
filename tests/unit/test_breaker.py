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


def test_a_client_has_no_breaker_unless_given_one() -> None:
    from sandlot.remote import Client

    assert Client(url="http://alone:1").breaker is None
    assert Client(url="http://alone:1").retry_for == 30.0
    shared = breaker_for("http://alone:1")
    assert Client(url="http://alone:1", breaker=shared).breaker is shared


def test_states_report_the_worst_breaker_of_a_url() -> None:
    calm = CircuitBreaker("http://several:1")
    tripped = CircuitBreaker("http://several:1", failures=1)
    tripped.failure("refused")
    assert states()["http://several:1"] == "open"
    del tripped
    assert states()["http://several:1"] == "closed"
    assert calm.state == "closed"


def test_retry_pauses_grow_with_jitter_and_stop_at_the_deadline() -> None:
    from sandlot.remote.client import RETRY_DELAY, RETRY_DELAY_MAX, _pause

    for attempt in range(1, 12):
        pause = _pause(attempt, 100.0)
        ceiling = min(RETRY_DELAY * 2 ** (attempt - 1), RETRY_DELAY_MAX)
        assert pause is not None and ceiling / 2 <= pause <= ceiling
    assert _pause(1, 0.05) is None  # past the deadline: give up instead
    assert _pause(1, 100.0, "7") == 7.0  # the server's Retry-After
    assert _pause(1, 5.0, "7") is None


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: connections are refused


def test_a_server_never_reached_is_given_up_on_within_the_first_contact_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wrong URL is reported in seconds even with a long retry_for; a server that has
    answered this process before is tried for all of retry_for (a restart)."""
    import asyncio

    from sandlot.remote import client as module

    monkeypatch.setattr(module, "FIRST_CONTACT", 0.5)
    url = f"http://127.0.0.1:{_closed_port()}"

    async def attempts(retry_for: float) -> str:
        client = module.Client(url=url, retry_for=retry_for)
        try:
            with pytest.raises(RemoteUnavailableError) as caught:
                await client.call("GET", "/healthz")
        finally:
            await client.aclose()
        return str(caught.value)

    # Without the first-contact window this call would retry for an hour.
    assert "cannot reach" in asyncio.run(attempts(3600.0))
    monkeypatch.setattr(module, "_answered", {url})
    # Pauses of 0.1-0.2, 0.2-0.4, 0.4-0.8 and 0.5-1.0 s all fit in 3 s: at least 1.2 s tried.
    message = asyncio.run(attempts(3.0))
    tried = float(message.split(" in ")[-1].split(" s)")[0])
    assert tried > 1.0  # past the first-contact window (0.5 s): it was waited for
