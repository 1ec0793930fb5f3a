"""``sandbox.pty`` of the official ``e2b`` SDK against a real ``sandlot serve``: a terminal's
output, input, resize, reattach and kill."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from e2b import CommandExitException, PtySize

pytestmark = pytest.mark.timeout(120)


class Screen:
    """What a terminal wrote, collected by a thread that waits for its end."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.data = b""
        self.changed = threading.Condition()
        self.result: Any = None
        self.gone = False
        self.thread = threading.Thread(target=self._wait, daemon=True)
        self.thread.start()

    def _wait(self) -> None:
        try:
            self.result = self.handle.wait(on_pty=self._on_pty)
        except Exception as exc:
            self.result = exc
        with self.changed:
            self.gone = True
            self.changed.notify_all()

    def _on_pty(self, data: bytes) -> None:
        with self.changed:
            self.data += data
            self.changed.notify_all()

    def until(self, text: bytes) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: text in self.data or self.gone, timeout=60):
                raise AssertionError(f"{text!r} never came: {self.data[-500:]!r}")
            if text not in self.data:
                raise AssertionError(f"{text!r} never came: {self.result!r}")

    def ended(self) -> Any:
        self.thread.join(60)
        return self.result


def test_pty_input_resize_and_exit(sbx: Any) -> None:
    handle = sbx.pty.create(PtySize(rows=24, cols=80), timeout=0)
    screen = Screen(handle)
    sbx.pty.send_stdin(handle.pid, b"echo $((40+2))-ok\n")
    screen.until(b"42-ok")
    sbx.pty.resize(handle.pid, PtySize(rows=30, cols=100))
    sbx.pty.send_stdin(handle.pid, b"stty size\n")
    screen.until(b"30 100")
    assert handle.pid in {p.pid for p in sbx.commands.list()}
    sbx.pty.send_stdin(handle.pid, b"exit 0\n")
    assert screen.ended().exit_code == 0


def test_pty_reattach_and_kill(sbx: Any) -> None:
    handle = sbx.pty.create(PtySize(rows=24, cols=80), timeout=0)
    handle.disconnect()  # the terminal runs on
    again = sbx.pty.connect(handle.pid, timeout=0)
    screen = Screen(again)
    sbx.pty.send_stdin(handle.pid, b"echo back-$((1+1))\n")
    screen.until(b"back-2")
    assert sbx.pty.kill(handle.pid) is True
    assert isinstance(screen.ended(), CommandExitException)
