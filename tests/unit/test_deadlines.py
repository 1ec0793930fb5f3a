"""The client's deadline settings, and the CLI's limit on holding a signal back (issue 16).
The deadlines at work against a stopped server: tests/remote/test_client_deadlines.py."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from sandlot.cli import _common as cli
from sandlot.errors import InvalidArgumentError
from sandlot.remote.client import Client

URL = "http://127.0.0.1:8787"


def test_deadlines_default_to_a_minute_and_three_keep_alives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SANDLOT_CALL_TIMEOUT", raising=False)
    monkeypatch.delenv("SANDLOT_STREAM_TIMEOUT", raising=False)
    client = Client(url=URL)
    assert (client.call_timeout, client.stream_timeout) == (60.0, 45.0)
    assert client.slow_call_timeout == 600.0


def test_deadlines_come_from_the_environment_unless_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SANDLOT_CALL_TIMEOUT", "7.5")
    monkeypatch.setenv("SANDLOT_STREAM_TIMEOUT", "90")
    assert (Client(url=URL).call_timeout, Client(url=URL).stream_timeout) == (7.5, 90.0)
    given = Client(url=URL, call_timeout=3, stream_timeout=4)
    assert (given.call_timeout, given.stream_timeout) == (3.0, 4.0)
    assert Client(url=URL, call_timeout=900).slow_call_timeout == 900.0


@pytest.mark.parametrize("raw", ["0", "-1", "soon", "nan", "inf"])
def test_a_bad_deadline_in_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("SANDLOT_CALL_TIMEOUT", raw)
    with pytest.raises(InvalidArgumentError, match="SANDLOT_CALL_TIMEOUT"):
        Client(url=URL)


@pytest.mark.parametrize("value", [0, -2.0, True, "60"])
def test_a_bad_deadline_argument_is_refused(value: object) -> None:
    with pytest.raises(InvalidArgumentError, match="stream_timeout"):
        Client(url=URL, stream_timeout=value)  # type: ignore[arg-type]


@pytest.mark.timeout(60)
def test_a_held_signal_acts_once_held_too_long(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command's start that never ends (a silent server) cannot keep SIGTERM back."""
    monkeypatch.setattr(cli, "HOLD_LIMIT", 0.2)
    never = threading.Event()
    with pytest.raises(cli.Signalled) as caught, cli.HeldSignals():
        os.kill(os.getpid(), signal.SIGTERM)
        never.wait(30)  # the start that hangs; the signal must interrupt it
    assert caught.value.signum == signal.SIGTERM
